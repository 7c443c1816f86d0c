"""manage.py api_tokens: create (the token alone on stdout, shown once), list, revoke, prune."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from api_tokens.models import ApiToken
from api_tokens.services import api_token_issue
from tests.api_tokens.conftest import authenticates

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("api_tokens", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_prints_the_token_alone_and_keeps_only_its_digest(buyer):
    out, err = run("create", buyer.username, "--name", "ci")

    token = out.strip()
    [row] = ApiToken.objects.filter(user=buyer)
    assert out == token + "\n"  # TOKEN=$(manage.py api_tokens create alice) takes it as it is
    assert f"token {row.pk} for {buyer.username}" in err
    assert "shown this once" in err
    assert row.name == "ci"
    assert token not in (row.digest, row.token_key)
    assert authenticates(token)


def test_create_with_a_lifetime_in_days(buyer):
    run("create", buyer.username, "--days", "0.5")

    expiry = ApiToken.objects.get(user=buyer).expiry
    assert abs(expiry - (timezone.now() + timedelta(hours=12))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "nobody"), "no user 'nobody'"),
        (("create", "{buyer}", "--days", "0"), "--days must be more than 0"),
        (("revoke", "{buyer}", "--id", "999999"), "has no token 999999"),
    ],
)
def test_mistakes_are_command_errors(buyer, args, message):
    with pytest.raises(CommandError, match=message):
        run(*(arg.format(buyer=buyer.username) for arg in args))


def test_create_past_the_limit_is_a_command_error(buyer, settings):
    settings.API_TOKEN_LIMIT_PER_USER = 1
    run("create", buyer.username)

    with pytest.raises(CommandError, match="already has 1 tokens"):
        run("create", buyer.username)


def test_list_shows_each_token_but_never_the_token(buyer):
    ci = api_token_issue(user=buyer, name="ci")
    expired = api_token_issue(user=buyer, name="old", lifetime=timedelta(seconds=-1))

    out, _ = run("list", buyer.username)

    lines = out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        [str(ci.api_token.pk), "ci"],
        [str(expired.api_token.pk), "old"],
    ]
    assert "\texpires " in lines[0]
    assert "\texpired " in lines[1]
    assert ci.token not in out


def test_revoke_by_id_by_name_and_all(buyer):
    one, two, ci, other = (api_token_issue(user=buyer, name=name) for name in ("a", "b", "ci", "ci2"))

    run("revoke", buyer.username, "--id", str(one.api_token.pk), "--id", str(two.api_token.pk))
    assert [authenticates(issued.token) for issued in (one, two, ci, other)] == [False, False, True, True]

    run("revoke", buyer.username, "--name", "ci")
    assert [authenticates(issued.token) for issued in (ci, other)] == [False, True]

    out, _ = run("revoke", buyer.username, "--all")
    assert out == "revoked 1 token(s)\n"
    assert not ApiToken.objects.filter(user=buyer).exists()


def test_prune_deletes_expired_tokens_only(buyer):
    live = api_token_issue(user=buyer)
    expired = api_token_issue(user=buyer, lifetime=timedelta(seconds=-1))

    out, _ = run("prune")

    assert out == "deleted 1 expired token(s)\n"
    assert list(ApiToken.objects.values_list("pk", flat=True)) == [live.api_token.pk]
    assert not ApiToken.objects.filter(pk=expired.api_token.pk).exists()
