"""`Authorization: Token <token>` with knox tokens: kept as digests only, expiring, revocable, several
per user; and whatever a client sends in the header, a 401 problem, never a 500."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from api_tokens.models import ApiToken
from api_tokens.services import TooManyApiTokens, api_token_issue, api_token_revoke
from marketplace.problems import PROBLEM_CONTENT_TYPE
from tests.api_tokens.conftest import authenticates, with_token
from tests.support.orders import assert_problem

pytestmark = pytest.mark.django_db

# Header values as a WSGI server hands them over: latin-1 text, without line breaks.
HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=200)
FUZZ = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def issued(buyer):
    return api_token_issue(user=buyer)


def tables_holding(text: str) -> list[str]:
    """The tables of the whole database with a row whose text form contains ``text``."""
    holding = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            name = connection.ops.quote_name(table)
            query = f"SELECT 1 FROM {name} AS t WHERE strpos(t::text, %s) > 0 LIMIT 1"  # noqa: S608 - names from the catalogue
            cursor.execute(query, [text])
            if cursor.fetchone():
                holding.append(table)
    return holding


def test_the_database_keeps_a_tokens_digest_never_the_token(buyer):
    issued = api_token_issue(user=buyer, name="ci")

    assert tables_holding(issued.token) == []
    assert tables_holding(issued.token[15:]) == []  # nor what follows the lookup prefix
    row = ApiToken.objects.get(user=buyer)
    assert row.digest == hashlib.sha512(issued.token.encode()).hexdigest()
    assert row.token_key == issued.token[:15]
    assert len(issued.token) == 64
    assert authenticates(issued.token)


def test_a_token_expires_after_API_TOKEN_TTL(buyer, settings):
    settings.API_TOKEN_TTL = timedelta(days=2)

    issued = api_token_issue(user=buyer)

    assert abs(issued.api_token.expiry - (timezone.now() + timedelta(days=2))) < timedelta(minutes=1)


def test_an_expired_token_is_refused_with_a_401_problem(buyer):
    issued = api_token_issue(user=buyer)
    ApiToken.objects.filter(pk=issued.api_token.pk).update(expiry=timezone.now() - timedelta(seconds=1))

    response = with_token(issued.token).get("/api/orders/")

    body = assert_problem(response, 401, "authentication-failed")
    assert "expired" in body["detail"]
    assert response["WWW-Authenticate"] == "Token"
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert issued.token not in response.content.decode()


def test_issuing_a_token_deletes_the_users_expired_ones(buyer):
    expired = api_token_issue(user=buyer, lifetime=timedelta(seconds=-1))

    api_token_issue(user=buyer)

    assert not ApiToken.objects.filter(pk=expired.api_token.pk).exists()


def test_a_user_holds_several_tokens_and_revoking_one_leaves_the_others(buyer):
    laptop, ci, phone = (api_token_issue(user=buyer, name=name) for name in ("laptop", "ci", "phone"))
    assert [authenticates(issued.token) for issued in (laptop, ci, phone)] == [True, True, True]

    api_token_revoke(user=buyer, token_id=ci.api_token.pk)

    assert [authenticates(issued.token) for issued in (laptop, ci, phone)] == [True, False, True]


def test_a_user_holds_at_most_API_TOKEN_LIMIT_PER_USER_live_tokens(buyer, settings):
    settings.API_TOKEN_LIMIT_PER_USER = 2
    first = api_token_issue(user=buyer)
    api_token_issue(user=buyer)

    with pytest.raises(TooManyApiTokens):
        api_token_issue(user=buyer)

    ApiToken.objects.filter(pk=first.api_token.pk).update(expiry=timezone.now())
    assert authenticates(api_token_issue(user=buyer).token)  # an expired token leaves its place


def test_the_token_of_a_deactivated_user_is_refused(buyer):
    issued = api_token_issue(user=buyer)
    buyer.is_active = False
    buyer.save()

    assert_problem(with_token(issued.token).get("/api/orders/"), 401, "authentication-failed")


@FUZZ
@given(suffix=HEADER_VALUES)
@example(suffix="x")
@example(suffix="\xe9")  # not UTF-8 once encoded as latin-1: knox's own check would raise
def test_a_token_sharing_only_the_lookup_prefix_is_refused(issued, suffix):
    forged = issued.token[:15] + suffix
    if forged.strip() == issued.token:
        return

    response = with_token(forged).get("/api/orders/")

    assert response.status_code == 401, response.content
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE


@FUZZ
@given(authorization=HEADER_VALUES | HEADER_VALUES.map(lambda value: "Token " + value))
@example(authorization="Token \xff\xfe")
@example(authorization="Token " + "a" * 10_000)
@example(authorization="token")
def test_any_authorization_header_is_a_401_problem_never_a_500(db, authorization):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)

    response = client.get("/api/orders/")

    assert response.status_code == 401, response.content
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
