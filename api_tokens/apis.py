"""The token API: a username and password get a new token; a token lists and revokes its user's tokens."""

from django.contrib.auth.signals import user_logged_in
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authentication import BasicAuthentication
from rest_framework.exceptions import NotAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from api_tokens import selectors, services
from api_tokens.authentication import ApiTokenAuthentication
from api_tokens.serializers import (
    ApiTokenIssueInputSerializer,
    ApiTokenOutputSerializer,
    IssuedApiTokenOutputSerializer,
    TooManyTokensProblemSerializer,
)
from marketplace.problems import PROBLEM_CONTENT_TYPE, ProblemSerializer
from orders.apis import JSON, NOT_AUTHENTICATED, RATE_LIMITED, RETRY_AFTER
from orders.filters import MAX_ID

# Responses are keyed (status, media type), as in orders.apis: errors are served as problem+json.
DATABASE_UNAVAILABLE = {
    (503, PROBLEM_CONTENT_TYPE): OpenApiResponse(
        ProblemSerializer, description="The database cannot be reached. Retry after `Retry-After` seconds."
    )
}
TOKEN_ID = OpenApiParameter("token_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, OpenApiParameter.PATH)
NOT_ONE_OF_MY_TOKENS = {
    (404, PROBLEM_CONTENT_TYPE): OpenApiResponse(ProblemSerializer, description="No such token among yours.")
}
REVOKED = {(204, JSON): OpenApiResponse(description="Revoked: the token is refused from now on.")}


class ApiTokenListIssueApi(APIView):
    authentication_classes = [ApiTokenAuthentication]

    def get_authenticators(self):
        # A token never gets a new token: else a stolen one could renew itself before it expires,
        # and expiry would bound nothing. A new token takes the user's password (HTTP Basic), which
        # DRF checks with django.contrib.auth.authenticate(request=...), so login lockout sees it.
        # (The request is Django's here; drf-spectacular asks once before it has one.)
        request = getattr(self, "request", None)
        if request is not None and request.method == "POST":
            return [BasicAuthentication()]
        return super().get_authenticators()

    def permission_denied(self, request, message=None, code=None):
        if request.method == "POST" and not request.successful_authenticator:
            raise NotAuthenticated("A new token takes a username and password (HTTP Basic), not a token.")
        super().permission_denied(request, message, code)

    @extend_schema(
        summary="List my API tokens",
        description="Every token of mine, oldest first, expired ones included until they are pruned. "
        "Never the tokens themselves: they are not kept.",
        parameters=[RETRY_AFTER],
        responses={
            (200, JSON): ApiTokenOutputSerializer(many=True),
            **NOT_AUTHENTICATED,
            **RATE_LIMITED,
            **DATABASE_UNAVAILABLE,
        },
    )
    def get(self, request):
        return Response(ApiTokenOutputSerializer(selectors.api_token_list(user=request.user), many=True).data)

    @extend_schema(
        summary="Issue an API token",
        description=(
            "A new token for the user whose username and password come as HTTP Basic credentials "
            "(a token cannot get another token). It expires after `API_TOKEN_TTL_DAYS`; a user has at "
            "most `API_TOKEN_LIMIT_PER_USER` live ones. The token is in this response only."
        ),
        request=ApiTokenIssueInputSerializer,
        parameters=[
            OpenApiParameter(
                "Cache-Control",
                {"type": "string", "enum": ["no-store"]},
                OpenApiParameter.HEADER,
                required=True,
                response=[201],
                description="The response carries a secret: no cache keeps it.",
            ),
            RETRY_AFTER,
        ],
        responses={
            (201, JSON): IssuedApiTokenOutputSerializer,
            (400, PROBLEM_CONTENT_TYPE): OpenApiResponse(
                ProblemSerializer, description="No `name`, or not a string of 1 to 100 characters."
            ),
            (401, PROBLEM_CONTENT_TYPE): OpenApiResponse(
                ProblemSerializer, description="No username and password (HTTP Basic), or a wrong one."
            ),
            (409, PROBLEM_CONTENT_TYPE): OpenApiResponse(
                TooManyTokensProblemSerializer, description="The user has its limit of live tokens: revoke one."
            ),
            (413, PROBLEM_CONTENT_TYPE): OpenApiResponse(ProblemSerializer, description="Request body too large."),
            (415, PROBLEM_CONTENT_TYPE): OpenApiResponse(
                ProblemSerializer, description="The body is not `application/json`."
            ),
            **RATE_LIMITED,
            **DATABASE_UNAVAILABLE,
        },
    )
    def post(self, request):
        serializer = ApiTokenIssueInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = services.api_token_issue(user=request.user, name=serializer.validated_data["name"])
        # Issuing a token for a password is a login: Django records it (last_login), and so does
        # django-axes, which resets the failed attempts it counted against this user.
        user_logged_in.send(sender=type(request.user), request=request, user=request.user)
        body = IssuedApiTokenOutputSerializer(
            {**ApiTokenOutputSerializer(issued.api_token).data, "token": issued.token}
        )
        return Response(body.data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(
        operation_id="tokens_revoke_all",
        summary="Revoke all my API tokens",
        description="Every token of mine, the one sending this request included.",
        parameters=[RETRY_AFTER],
        responses={**REVOKED, **NOT_AUTHENTICATED, **RATE_LIMITED, **DATABASE_UNAVAILABLE},
    )
    def delete(self, request):
        services.api_token_revoke_all(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenCurrentApi(APIView):
    authentication_classes = [ApiTokenAuthentication]

    @extend_schema(
        operation_id="tokens_revoke_current",
        summary="Revoke the token of this request",
        parameters=[RETRY_AFTER],
        responses={**REVOKED, **NOT_AUTHENTICATED, **RATE_LIMITED, **DATABASE_UNAVAILABLE},
    )
    def delete(self, request):
        services.api_token_revoke(user=request.user, token_id=request.auth.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenDetailApi(APIView):
    authentication_classes = [ApiTokenAuthentication]

    @extend_schema(
        operation_id="tokens_revoke",
        summary="Revoke one of my API tokens",
        parameters=[TOKEN_ID, RETRY_AFTER],
        responses={**REVOKED, **NOT_AUTHENTICATED, **NOT_ONE_OF_MY_TOKENS, **RATE_LIMITED, **DATABASE_UNAVAILABLE},
    )
    def delete(self, request, token_id: int):
        services.api_token_revoke(user=request.user, token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
