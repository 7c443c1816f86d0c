"""The API's rate limits as a client meets them: orders per buyer, requests without valid credentials
per client address, 429 problem+json with Retry-After past either, and nothing changed by a refusal."""

import time

import pytest
from rest_framework.test import APIClient

from marketplace.ratelimits.models import RateLimitCounter
from orders.models import Order
from tests.factories import BuyerFactory, ProductFactory
from tests.support.orders import ORDERS_URL, PRODUCTS_URL, assert_problem, place, snapshot

pytestmark = pytest.mark.django_db

HOUR = 3600
ADDRESS = "203.0.113.7"
OTHER_ADDRESS = "198.51.100.20"


def assert_rate_limited(response, *, window: int) -> int:
    """A 429 problem whose Retry-After (and the body's retry_after) is within the window; the wait."""
    body = assert_problem(response, 429, "throttled")
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= window
    assert body["retry_after"] == retry_after
    return retry_after


def anonymous(address: str = ADDRESS) -> APIClient:
    return APIClient(REMOTE_ADDR=address)


def test_past_the_order_limit_a_buyer_gets_a_429_with_retry_after_and_nothing_is_placed(rate_limits, api):
    rate_limits(orders="3/hour")
    product = ProductFactory(stock=100)
    for _ in range(3):
        assert place(api, (product, 1)).status_code == 201
    before = snapshot()

    refused = place(api, (product, 1), HTTP_IDEMPOTENCY_KEY="after-the-limit")

    assert_rate_limited(refused, window=HOUR)
    assert snapshot() == before  # no order, no stock taken, no event, no idempotency key


def test_the_order_limit_is_per_buyer_and_for_placing_only(rate_limits, client_for, buyer, api):
    rate_limits(orders="2/hour")
    product = ProductFactory(stock=100)
    placed = [place(api, (product, 1)).json()["id"] for _ in range(2)]
    assert_rate_limited(place(api, (product, 1)), window=HOUR)

    # The same buyer still reads and cancels; another buyer still orders; nobody's address is counted.
    assert api.get(ORDERS_URL).status_code == 200
    assert api.get(f"{ORDERS_URL}{placed[0]}/").status_code == 200
    assert api.post(f"{ORDERS_URL}{placed[0]}/cancel/").status_code == 200
    assert place(client_for(BuyerFactory()), (product, 1)).status_code == 201
    assert anonymous("127.0.0.1").get(PRODUCTS_URL).status_code == 200


def test_the_order_limit_counts_the_buyer_whatever_authenticated_them(rate_limits, client_for, buyer):
    rate_limits(orders="2/hour")
    product = ProductFactory(stock=100)
    with_session = APIClient()
    with_session.force_login(buyer)

    assert place(client_for(buyer), (product, 1)).status_code == 201
    assert place(with_session, (product, 1)).status_code == 201
    assert_rate_limited(place(client_for(buyer), (product, 1)), window=HOUR)
    assert_rate_limited(place(with_session, (product, 1)), window=HOUR)
    assert Order.objects.filter(buyer=buyer).count() == 2


def test_unauthenticated_requests_are_limited_per_client_address(rate_limits):
    rate_limits(unauthenticated="3/hour")
    for _ in range(3):
        assert anonymous().get(PRODUCTS_URL).status_code == 200

    assert_rate_limited(anonymous().get(PRODUCTS_URL), window=HOUR)
    assert anonymous(OTHER_ADDRESS).get(PRODUCTS_URL).status_code == 200


def test_requests_refused_for_missing_credentials_count_too(rate_limits):
    rate_limits(unauthenticated="2/hour")
    for _ in range(2):
        assert_problem(anonymous().get(ORDERS_URL), 401)

    assert_rate_limited(anonymous().get(ORDERS_URL), window=HOUR)
    assert_rate_limited(place(anonymous(), (1, 1)), window=HOUR)


def test_token_guesses_count_and_past_the_limit_even_the_right_token_is_refused(rate_limits, client_for, buyer):
    """Else a guesser past the limit would still tell a right token (200) from a wrong one (429)."""
    rate_limits(unauthenticated="3/hour", orders="10/hour")
    guesser = anonymous()
    guesser.credentials(HTTP_AUTHORIZATION="Token " + "0" * 64)
    for _ in range(3):
        assert_problem(guesser.get(ORDERS_URL), 401, "authentication-failed")

    assert_rate_limited(guesser.get(ORDERS_URL), window=HOUR)
    assert_rate_limited(anonymous().get(PRODUCTS_URL), window=HOUR)
    assert_rate_limited(client_for(buyer).get(ORDERS_URL, REMOTE_ADDR=ADDRESS), window=HOUR)
    # The buyer, from anywhere else, is not held back by that address.
    assert client_for(buyer).get(ORDERS_URL, REMOTE_ADDR=OTHER_ADDRESS).status_code == 200
    assert place(client_for(buyer), (ProductFactory(), 1), REMOTE_ADDR=OTHER_ADDRESS).status_code == 201


def test_authenticated_requests_never_use_up_their_address_quota(rate_limits, api):
    rate_limits(unauthenticated="2/hour")
    product = ProductFactory(stock=100)
    for _ in range(5):
        assert api.get(PRODUCTS_URL, REMOTE_ADDR=ADDRESS).status_code == 200
    assert place(api, (product, 1), REMOTE_ADDR=ADDRESS).status_code == 201

    for _ in range(2):
        assert anonymous().get(PRODUCTS_URL).status_code == 200


def test_a_buyer_past_the_order_limit_does_not_use_up_their_address_quota(rate_limits, api):
    rate_limits(orders="1/hour", unauthenticated="2/hour")
    product = ProductFactory(stock=100)
    assert place(api, (product, 1), REMOTE_ADDR=ADDRESS).status_code == 201
    for _ in range(3):
        assert_rate_limited(place(api, (product, 1), REMOTE_ADDR=ADDRESS), window=HOUR)

    for _ in range(2):
        assert anonymous().get(PRODUCTS_URL).status_code == 200


def test_when_the_window_ends_requests_are_allowed_again(rate_limits):
    rate_limits(unauthenticated="2/second")
    time.sleep(1 - time.time() % 1)  # at the start of a one-second window
    for _ in range(2):
        assert anonymous().get(PRODUCTS_URL).status_code == 200
    retry_after = assert_rate_limited(anonymous().get(PRODUCTS_URL), window=1)

    time.sleep(retry_after)

    assert anonymous().get(PRODUCTS_URL).status_code == 200


def test_with_no_limits_nothing_is_counted_or_refused(rate_limits, api):
    rate_limits(orders=None, unauthenticated=None)
    product = ProductFactory(stock=100)
    for _ in range(5):
        assert place(api, (product, 1)).status_code == 201
        assert anonymous().get(PRODUCTS_URL).status_code == 200
    assert not RateLimitCounter.objects.exists()
