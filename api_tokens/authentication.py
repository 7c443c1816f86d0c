"""``Authorization: Token <token>``: the API's authentication, checked against the digests knox keeps."""

from __future__ import annotations

from hmac import compare_digest

from django.utils import timezone
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.settings import CONSTANTS
from rest_framework.exceptions import AuthenticationFailed

from api_tokens.models import ApiToken


class ApiTokenAuthentication(TokenAuthentication):
    """knox's token authentication (same header, same digests) in one query per request.

    knox's own check also reads every other token of the user on each request, to delete the expired
    ones, and deletes an expired token it is shown, answering as if it never existed. Here a request
    reads the candidates for its token and nothing else, and an expired token is refused as expired,
    so that its client knows to get a new one rather than suspect its configuration; expired tokens
    are deleted when their user is issued a new one, or by ``manage.py api_tokens prune``.
    """

    def authenticate_credentials(self, token: bytes):
        try:
            key = token.decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token.") from None
        digest = hash_token(key)
        # The prefix finds the row; the digest, compared in constant time, is what authenticates.
        candidates = ApiToken.objects.filter(token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH]).select_related("user")
        for api_token in candidates:
            if compare_digest(digest, api_token.digest):
                if api_token.expiry <= timezone.now():
                    raise AuthenticationFailed("The token has expired: get a new one.")
                return self.validate_user(api_token)
        raise AuthenticationFailed("Invalid token.")


class ApiTokenScheme(KnoxTokenScheme):
    """Its OpenAPI security scheme: knox's, under the name DRF's token authentication had."""

    target_class = "api_tokens.authentication.ApiTokenAuthentication"
    name = "tokenAuth"
