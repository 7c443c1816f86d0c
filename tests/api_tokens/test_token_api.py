"""The token API: POST /api/tokens/ issues a token for a username and password (HTTP Basic);
a token lists its user's tokens and revokes the current one, one by id, or all."""

from __future__ import annotations

import base64

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from api_tokens.models import ApiToken
from api_tokens.services import api_token_issue
from tests.api_tokens.conftest import PASSWORD, authenticates, with_token
from tests.factories import BuyerFactory
from tests.support.orders import assert_problem

pytestmark = pytest.mark.django_db

TOKENS_URL = "/api/tokens/"
NAMED = {"name": "ci"}


def basic(username: str, password: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{username}:{password}".encode()).decode())
    return client


def test_a_username_and_password_get_a_token_shown_once(buyer_with_password):
    response = basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL, NAMED, format="json")

    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"id", "name", "created", "expiry", "token"}
    assert body["name"] == "ci"
    row = ApiToken.objects.get(pk=body["id"], user=buyer_with_password)
    assert row.expiry > timezone.now()
    assert authenticates(body["token"])
    listed = with_token(body["token"]).get(TOKENS_URL).json()
    assert "token" not in listed[0]


def test_issuing_needs_no_trailing_slash(buyer_with_password):
    response = basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL.rstrip("/"), NAMED, format="json")

    assert response.status_code == 201, response.content


def test_issuing_records_the_login(buyer_with_password):
    basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL, NAMED, format="json")

    buyer_with_password.refresh_from_db()
    assert buyer_with_password.last_login is not None


@pytest.mark.parametrize(
    "client",
    [
        pytest.param(lambda buyer: basic(buyer.username, "wrong password"), id="wrong password"),
        pytest.param(lambda buyer: basic("nobody", PASSWORD), id="unknown user"),
        pytest.param(lambda buyer: with_token(api_token_issue(user=buyer).token), id="a token"),
        pytest.param(lambda buyer: APIClient(), id="no credentials"),
    ],
)
def test_only_the_right_password_gets_a_token(buyer_with_password, client):
    requester = client(buyer_with_password)
    before = ApiToken.objects.count()

    response = requester.post(TOKENS_URL, {"name": "x"}, format="json")

    assert_problem(response, 401)
    assert response["WWW-Authenticate"] == 'Basic realm="api"'
    assert ApiToken.objects.count() == before


def test_a_token_is_told_that_issuing_takes_a_password(buyer):
    response = with_token(api_token_issue(user=buyer).token).post(TOKENS_URL)

    assert "HTTP Basic" in assert_problem(response, 401, "not-authenticated")["detail"]


def test_a_user_without_a_usable_password_gets_no_token_from_the_api(buyer, fast_password_hashing):
    buyer.set_unusable_password()
    buyer.save()

    assert_problem(basic(buyer.username, "").post(TOKENS_URL), 401)


def test_password_guesses_lock_the_username_out_from_the_guessing_address(buyer_with_password, settings):
    """The password check gets the request, so login lockout (django-axes) counts failures per
    username and client address here as on the admin's login."""
    guesser, elsewhere = {"REMOTE_ADDR": "203.0.113.9"}, {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert_problem(basic(buyer_with_password.username, "guess").post(TOKENS_URL, **guesser), 401)

    locked_out = basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL, NAMED, format="json", **guesser)
    from_elsewhere = basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL, NAMED, format="json", **elsewhere)

    assert_problem(locked_out, 401)
    assert from_elsewhere.status_code == 201, from_elsewhere.content


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": 0}, {"name": "x" * 101}, {"name": "a\x00b"}])
def test_a_token_needs_a_name(buyer_with_password, body):
    response = basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL, body, format="json")

    assert assert_problem(response, 400, "validation-error")["errors"][0]["attr"] == "name"
    assert not ApiToken.objects.exists()


def test_past_the_limit_it_is_a_409(buyer_with_password, settings):
    settings.API_TOKEN_LIMIT_PER_USER = 1
    api_token_issue(user=buyer_with_password)

    response = basic(buyer_with_password.username, PASSWORD).post(TOKENS_URL, NAMED, format="json")

    assert assert_problem(response, 409, "too-many-tokens")["limit"] == 1


def test_a_token_lists_its_users_tokens_only(buyer):
    mine = [api_token_issue(user=buyer, name=name) for name in ("laptop", "ci")]
    api_token_issue(user=BuyerFactory(), name="someone else's")

    response = with_token(mine[0].token).get(TOKENS_URL)

    assert response.status_code == 200
    assert [(token["id"], token["name"]) for token in response.json()] == [
        (issued.api_token.pk, issued.api_token.name) for issued in mine
    ]
    assert not any(issued.token in response.content.decode() for issued in mine)


def test_the_current_token_revokes_itself(buyer):
    current, other = api_token_issue(user=buyer), api_token_issue(user=buyer)

    response = with_token(current.token).delete(TOKENS_URL + "current/")

    assert response.status_code == 204
    assert [authenticates(current.token), authenticates(other.token)] == [False, True]


def test_a_token_revokes_one_of_its_users_tokens_by_id(buyer):
    current, other = api_token_issue(user=buyer), api_token_issue(user=buyer)

    response = with_token(current.token).delete(f"{TOKENS_URL}{other.api_token.pk}/")

    assert response.status_code == 204
    assert [authenticates(current.token), authenticates(other.token)] == [True, False]
    assert_problem(with_token(current.token).delete(f"{TOKENS_URL}{other.api_token.pk}/"), 404, "not-found")


def test_another_users_token_is_not_found(buyer):
    mine, theirs = api_token_issue(user=buyer), api_token_issue(user=BuyerFactory())

    response = with_token(mine.token).delete(f"{TOKENS_URL}{theirs.api_token.pk}/")

    assert_problem(response, 404, "not-found")
    assert authenticates(theirs.token)


def test_revoking_all_revokes_every_token_of_the_user_only(buyer):
    mine = [api_token_issue(user=buyer) for _ in range(3)]
    theirs = api_token_issue(user=BuyerFactory())

    response = with_token(mine[0].token).delete(TOKENS_URL)

    assert response.status_code == 204
    assert [authenticates(issued.token) for issued in [*mine, theirs]] == [False, False, False, True]


@pytest.mark.parametrize(("method", "path"), [("get", ""), ("delete", ""), ("delete", "current/"), ("delete", "1/")])
def test_listing_and_revoking_take_a_token_not_a_password(buyer_with_password, method, path):
    api_token_issue(user=buyer_with_password)

    response = getattr(basic(buyer_with_password.username, PASSWORD), method)(TOKENS_URL + path)

    assert_problem(response, 401, "not-authenticated")
    assert ApiToken.objects.filter(user=buyer_with_password).exists()
