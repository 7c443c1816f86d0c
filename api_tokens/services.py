"""Issuing and revoking API tokens. A token is shown once, when it is issued; the database keeps
only its digest (api_tokens.models.ApiToken)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from api_tokens.models import ApiToken
from marketplace.exceptions import Conflict, NotFound


class TooManyApiTokens(Conflict):
    slug = "too-many-tokens"
    title = "Too many tokens"


class ApiTokenNotFound(NotFound):
    """Another user's token is not found either."""


@dataclass(frozen=True)
class IssuedApiToken:
    api_token: ApiToken
    token: str  # the only time it exists outside its holder: shown once, never stored


def api_token_issue(*, user, name: str = "", lifetime: timedelta | None = None) -> IssuedApiToken:
    """A new token for ``user``, valid for ``lifetime`` (API_TOKEN_TTL by default).

    Deletes the user's expired tokens on the way, and refuses (TooManyApiTokens) a token past
    API_TOKEN_LIMIT_PER_USER live ones. The user's row is locked while counting, so that concurrent
    requests cannot both take the last free place.
    """
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        ApiToken.objects.filter(user=user, expiry__lte=timezone.now()).delete()
        limit = settings.API_TOKEN_LIMIT_PER_USER
        if ApiToken.objects.filter(user=user).count() >= limit:
            raise TooManyApiTokens(f"{user.get_username()} already has {limit} tokens: revoke one first.", limit=limit)
        api_token, token = ApiToken.objects.create(
            user=user, name=name, expiry=settings.API_TOKEN_TTL if lifetime is None else lifetime
        )
    return IssuedApiToken(api_token=api_token, token=token)


def api_token_revoke(*, user, token_id: int) -> None:
    """Revokes one of ``user``'s tokens (ApiTokenNotFound if it has no such token)."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    if not deleted:
        raise ApiTokenNotFound("No such token among yours.")


def api_token_revoke_all(*, user, name: str | None = None) -> int:
    """Revokes every token of ``user`` (only those called ``name``, if given); returns how many."""
    tokens = ApiToken.objects.filter(user=user)
    if name is not None:
        tokens = tokens.filter(name=name)
    deleted, _ = tokens.delete()
    return deleted


def api_tokens_prune_expired() -> int:
    """Deletes every expired token (they no longer authenticate); returns how many."""
    deleted, _ = ApiToken.objects.filter(expiry__lte=timezone.now()).delete()
    return deleted
