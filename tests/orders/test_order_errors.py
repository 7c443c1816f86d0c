"""Every rejected order answers with a problem details body and changes nothing."""

import json
import logging

import pytest
from django.db import InterfaceError, OperationalError
from rest_framework.test import APIClient

from orders import selectors
from tests.factories import BuyerFactory, ProductFactory, token_for
from tests.support.orders import ORDERS_URL, assert_problem, place, snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def hammer():
    return ProductFactory(stock=10)


@pytest.fixture
def bolts():
    return ProductFactory(stock=10)


def errors_of(body) -> list[tuple[str | None, str]]:
    return [(error["attr"], error["code"]) for error in body["errors"]]


@pytest.mark.parametrize(
    ("make_lines", "expected"),
    [
        pytest.param(lambda a, b: [{"product": a, "quantity": 0}], [("lines.0.quantity", "min_value")], id="qty-0"),
        pytest.param(lambda a, b: [{"product": a, "quantity": -3}], [("lines.0.quantity", "min_value")], id="qty-neg"),
        pytest.param(lambda a, b: [{"product": a, "quantity": 101}], [("lines.0.quantity", "max_value")], id="qty-max"),
        pytest.param(lambda a, b: [{"product": a, "quantity": 10**30}], [("lines.0.quantity", "max_value")], id="huge"),
        pytest.param(lambda a, b: [{"product": a, "quantity": "2"}], [("lines.0.quantity", "invalid")], id="qty-str"),
        pytest.param(
            lambda a, b: [{"product": a, "quantity": "two"}], [("lines.0.quantity", "invalid")], id="qty-word"
        ),
        pytest.param(lambda a, b: [{"product": a, "quantity": 1.5}], [("lines.0.quantity", "invalid")], id="qty-1.5"),
        pytest.param(lambda a, b: [{"product": a, "quantity": True}], [("lines.0.quantity", "invalid")], id="qty-bool"),
        pytest.param(lambda a, b: [{"product": a, "quantity": None}], [("lines.0.quantity", "null")], id="qty-null"),
        pytest.param(lambda a, b: [{"product": a, "quantity": [1]}], [("lines.0.quantity", "invalid")], id="qty-list"),
        pytest.param(lambda a, b: [{"product": a}], [("lines.0.quantity", "required")], id="qty-missing"),
        pytest.param(lambda a, b: [{"quantity": 1}], [("lines.0.product", "required")], id="product-missing"),
        pytest.param(lambda a, b: [{"product": str(a), "quantity": 1}], [("lines.0.product", "invalid")], id="pk-str"),
        pytest.param(lambda a, b: [{"product": 0, "quantity": 1}], [("lines.0.product", "min_value")], id="pk-0"),
        pytest.param(
            lambda a, b: [{"product": a, "quantity": 1}, {"product": b, "quantity": 0}],
            [("lines.1.quantity", "min_value")],
            id="second-line",
        ),
        pytest.param(
            lambda a, b: [{"product": "x", "quantity": 0}, {"product": b}],
            [("lines.0.product", "invalid"), ("lines.0.quantity", "min_value"), ("lines.1.quantity", "required")],
            id="every-error",
        ),
        pytest.param(
            lambda a, b: [{"product": a, "quantity": 1}, {"product": b, "quantity": 1}, {"product": a, "quantity": 2}],
            [("lines", "duplicate_product")],
            id="same-product-twice",
        ),
    ],
)
def test_an_invalid_line_is_a_400_naming_the_field(api, hammer, bolts, settings, make_lines, expected):
    """``make_lines(a, b)`` builds the lines from the ids of two products in stock."""
    settings.ORDER_MAX_QUANTITY = 100
    before = snapshot()

    response = api.post(ORDERS_URL, {"lines": make_lines(hammer.pk, bolts.pk)}, format="json")

    body = assert_problem(response, 400, "validation-error")
    assert errors_of(body) == expected
    assert all(error["detail"] for error in body["errors"])
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"lines": []}, [("lines", "empty")], id="no-lines"),
        pytest.param({}, [("lines", "required")], id="lines-missing"),
        pytest.param({"lines": None}, [("lines", "null")], id="lines-null"),
        pytest.param({"lines": "hammer x 2"}, [("lines", "not_a_list")], id="lines-a-string"),
        pytest.param({"lines": {"product": 1, "quantity": 1}}, [("lines", "not_a_list")], id="lines-an-object"),
        pytest.param({"lines": [7]}, [("lines.0", "invalid")], id="line-not-an-object"),
        pytest.param({"lines": [None]}, [("lines.0", "null")], id="line-null"),
        pytest.param([{"product": 1, "quantity": 1}], [(None, "invalid")], id="body-a-list"),
        pytest.param("order", [(None, "invalid")], id="body-a-string"),
        pytest.param(None, [(None, "null")], id="body-null"),
    ],
)
def test_a_wrongly_shaped_body_is_a_400(api, hammer, body, expected):
    before = snapshot()

    response = api.generic("POST", ORDERS_URL, json.dumps(body), content_type="application/json")

    assert errors_of(assert_problem(response, 400, "validation-error")) == expected
    assert snapshot() == before


def test_too_many_lines_is_a_400(api, settings):
    settings.ORDER_MAX_LINES = 2
    products = ProductFactory.create_batch(3)
    before = snapshot()

    response = place(api, *[(product, 1) for product in products])

    assert errors_of(assert_problem(response, 400, "validation-error")) == [("lines", "max_length")]
    assert snapshot() == before


def test_the_quantity_limit_follows_the_setting(api, hammer, settings):
    settings.ORDER_MAX_QUANTITY = 3
    before = snapshot()

    response = place(api, (hammer, 4))

    assert errors_of(assert_problem(response, 400, "validation-error")) == [("lines.0.quantity", "max_value")]
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"lines": [', id="truncated"),
        pytest.param(b"{'lines': []}", id="single-quotes"),
        pytest.param(b'{"lines": NaN}', id="nan"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[" * 50_000, id="nested-too-deeply"),
    ],
)
def test_malformed_json_is_a_400(api, hammer, raw):
    before = snapshot()

    response = api.generic("POST", ORDERS_URL, raw, content_type="application/json")

    body = assert_problem(response, 400, "malformed-request")
    assert "errors" not in body
    assert snapshot() == before


def test_an_unknown_product_is_a_400(api, hammer):
    before = snapshot()

    response = place(api, (hammer, 1), (999_999_999, 1), (2**63, 1))

    body = assert_problem(response, 400, "validation-error")
    assert errors_of(body) == [("lines.1.product", "does_not_exist"), ("lines.2.product", "does_not_exist")]
    assert snapshot() == before


def test_an_inactive_product_is_a_400(api, hammer):
    retired = ProductFactory(is_active=False, stock=10)
    before = snapshot()

    response = place(api, (hammer, 1), (retired, 1))

    assert errors_of(assert_problem(response, 400, "validation-error")) == [("lines.1.product", "inactive")]
    assert snapshot() == before


def test_a_bad_product_is_reported_before_a_stock_shortage(api, hammer):
    before = snapshot()

    response = place(api, (hammer, 11), (999_999_999, 1))

    assert errors_of(assert_problem(response, 400, "validation-error")) == [("lines.1.product", "does_not_exist")]
    assert snapshot() == before


def test_insufficient_stock_is_a_409_naming_the_short_line(api):
    product = ProductFactory(stock=2)
    before = snapshot()

    response = place(api, (product, 3))

    body = assert_problem(response, 409, "insufficient-stock")
    assert body["shortages"] == [{"line": 0, "product": product.pk, "requested": 3, "available": 2}]
    assert str(product.pk) in body["detail"]
    assert snapshot() == before


def test_when_only_the_second_line_is_short_the_first_is_not_taken_either(api):
    plenty, scarce = ProductFactory(stock=10), ProductFactory(stock=1)
    before = snapshot()

    response = place(api, (plenty, 5), (scarce, 2))

    body = assert_problem(response, 409, "insufficient-stock")
    assert body["shortages"] == [{"line": 1, "product": scarce.pk, "requested": 2, "available": 1}]
    assert snapshot() == before
    plenty.refresh_from_db()
    assert plenty.stock == 10


def test_every_short_line_is_named(api, hammer):
    sold_out, scarce = ProductFactory(stock=0), ProductFactory(stock=4)
    before = snapshot()

    response = place(api, (sold_out, 1), (hammer, 10), (scarce, 5))

    assert assert_problem(response, 409, "insufficient-stock")["shortages"] == [
        {"line": 0, "product": sold_out.pk, "requested": 1, "available": 0},
        {"line": 2, "product": scarce.pk, "requested": 5, "available": 4},
    ]
    assert snapshot() == before


def test_without_a_token_it_is_a_401(hammer):
    before = snapshot()

    response = place(APIClient(), (hammer, 1))

    assert_problem(response, 401, "not-authenticated")
    assert response["WWW-Authenticate"] == "Token"
    assert snapshot() == before


@pytest.mark.parametrize(
    ("authorization", "slug"),
    [
        ("Token not-a-real-token", "authentication-failed"),
        ("Token", "authentication-failed"),
        ("Token a b", "authentication-failed"),
        ("Bearer abc", "not-authenticated"),  # not our scheme: as if there were no token
    ],
)
def test_with_a_bad_token_it_is_a_401(hammer, authorization, slug):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    before = snapshot()

    response = place(client, (hammer, 1))

    assert_problem(response, 401, slug)
    assert snapshot() == before


def test_an_inactive_buyer_is_a_401(client_for, hammer):
    buyer = BuyerFactory(is_active=False)
    before = snapshot()

    assert_problem(place(client_for(buyer), (hammer, 1)), 401, "authentication-failed")
    assert snapshot() == before


def test_a_body_over_the_limit_is_a_413(api, hammer, settings):
    settings.API_MAX_BODY_BYTES = 100
    before = snapshot()
    lines = [{"product": hammer.pk, "quantity": 1}] * 10

    response = api.post(ORDERS_URL, {"lines": lines}, format="json")

    assert_problem(response, 413, "payload-too-large")
    assert snapshot() == before


def test_a_body_of_exactly_the_limit_is_accepted(api, hammer, settings):
    raw = json.dumps({"lines": [{"product": hammer.pk, "quantity": 1}]}).encode()
    settings.API_MAX_BODY_BYTES = len(raw)

    response = api.generic("POST", ORDERS_URL, raw, content_type="application/json")

    assert response.status_code == 201, response.content


def test_a_body_that_is_not_json_is_a_415(api, hammer):
    before = snapshot()

    response = api.post(ORDERS_URL, {"lines": hammer.pk})

    assert_problem(response, 415, "unsupported-media-type")
    assert snapshot() == before


@pytest.mark.parametrize("key", ["", "k" * 256, "bad\x00key", "tab\tkey", " leading", "trailing ", " ", "caf\u00e9"])
def test_a_malformed_idempotency_key_is_a_400(api, hammer, key):
    before = snapshot()

    response = place(api, (hammer, 1), headers={"Idempotency-Key": key})

    assert errors_of(assert_problem(response, 400, "validation-error")) == [("Idempotency-Key", "invalid")]
    assert snapshot() == before


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_are_a_405(api, method):
    assert_problem(getattr(api, method)(ORDERS_URL), 405, "method-not-allowed")


@pytest.mark.parametrize("key", ["k", "k" * 255, "retry #1 of order 42 (~!)"])
def test_any_key_the_schema_allows_is_accepted(api, hammer, key):
    response = place(api, (hammer, 1), headers={"Idempotency-Key": key})

    assert response.status_code == 201, response.content


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
def test_an_order_posted_without_the_trailing_slash_is_placed(api, hammer, settings, debug):
    """Not a 301 a client would follow with a GET, losing the order, nor (under DEBUG) a 500."""
    settings.DEBUG = debug

    response = api.post(ORDERS_URL.removesuffix("/"), {"lines": [{"product": hammer.pk, "quantity": 1}]}, format="json")

    assert response.status_code == 201, response.content
    assert response["Location"] == f"{ORDERS_URL}{response.json()['id']}/"
    assert api.get(ORDERS_URL.removesuffix("/")).json()["count"] == 1
    assert api.get(response["Location"].removesuffix("/")).json() == response.json()


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(
    "path", ["/api/orders/-1/", "/api/orders/abc/", "/api/orders/1/lines/", "/api/nothing/", "/api/nothing", "/api"]
)
def test_an_unknown_api_path_is_a_404_problem(buyer, settings, debug, method, path):
    """Under DEBUG, Django's own answer is an HTML page listing every route."""
    settings.DEBUG = debug
    # CSRF checked, as for a real client: a POST must get the 404, not Django's HTML CSRF failure page.
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(buyer)}")

    assert_problem(getattr(client, method)(path), 404, "not-found")


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
def test_a_bug_in_an_api_view_is_a_500_problem_and_logged(api, monkeypatch, settings, caplog, debug):
    """Under DEBUG too, where Django would answer with its HTML debug page."""
    settings.DEBUG = debug

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(selectors, "order_list", broken)
    api.raise_request_exception = False

    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = api.get(ORDERS_URL)

    assert_problem(response, 500, "internal-error")
    [record] = [record for record in caplog.records if record.name == "django.request"]
    assert record.exc_info[1].args == ("a bug",)


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_a_database_connection_failure_is_a_503_with_retry_after(api, monkeypatch, error):
    """tests/orders/test_database_unavailable.py cuts the database for real."""

    def unreachable(**kwargs):
        raise error("connection refused")

    monkeypatch.setattr(selectors, "order_list", unreachable)

    response = api.get(ORDERS_URL)

    assert_problem(response, 503, "service-unavailable")
    assert response["Retry-After"] == "5"
