"""One mapping from every client-visible error to an RFC 9457 problem details response."""

from __future__ import annotations

import sys
from typing import Any

from django.core import signals
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.utils.log import log_response
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import set_rollback

from marketplace.exceptions import DomainError
from marketplace.parsers import PayloadTooLarge
from marketplace.ratelimits.throttles import throttle_refused_credentials

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://marketplace.example/problems/"
# What a client is told to wait after a 503 when PostgreSQL cannot be reached: long enough for a
# restart or failover to finish, short enough that a retrying client does not give up on us.
DATABASE_RETRY_AFTER_SECONDS = 5
# Django wraps every driver error. These two are the database out of reach (connection refused,
# reset, closed, timed out) or a transient failure of its own (deadlock, cancelled statement), not a
# bad query: the same request may succeed later, so they are a 503, not a 500.
DATABASE_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
# No credentials, or wrong ones (a token guess): counted against the client's address.
REFUSED_CREDENTIALS = (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)

_DRF_PROBLEMS: list[tuple[type[exceptions.APIException], str, str]] = [
    (exceptions.ValidationError, "validation-error", "Invalid request"),
    (exceptions.ParseError, "malformed-request", "Malformed request body"),
    (exceptions.NotAuthenticated, "not-authenticated", "Authentication required"),
    (exceptions.AuthenticationFailed, "authentication-failed", "Authentication failed"),
    (exceptions.PermissionDenied, "permission-denied", "Permission denied"),
    (exceptions.NotFound, "not-found", "Not found"),
    (exceptions.MethodNotAllowed, "method-not-allowed", "Method not allowed"),
    (exceptions.NotAcceptable, "not-acceptable", "Not acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported-media-type", "Unsupported media type"),
    (exceptions.Throttled, "throttled", "Too many requests"),
    (PayloadTooLarge, "payload-too-large", "Payload too large"),
]


class ProblemSerializer(serializers.Serializer):
    """Documents the error body in the OpenAPI schema."""

    class FieldError(serializers.Serializer):
        attr = serializers.CharField(help_text="Dotted path of the field, e.g. `lines.0.quantity`.", allow_null=True)
        code = serializers.CharField()
        detail = serializers.CharField()

    type = serializers.CharField(help_text="URI identifying the problem type.")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    instance = serializers.CharField(help_text="The request path.")
    request_id = serializers.CharField()
    errors = FieldError(many=True, required=False, help_text="Per-field errors (400 only).")


class RateLimitedProblemSerializer(ProblemSerializer):
    """Documents a 429's body."""

    errors = None
    retry_after = serializers.IntegerField(
        min_value=1, help_text="Seconds until the rate limit's window ends, as in `Retry-After`."
    )


def problem(request, *, status: int, slug: str, title: str, detail: str, **extensions: Any) -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE_URI + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path if request is not None else "",
        "request_id": getattr(request, "request_id", ""),
        **extensions,
    }


def flatten_errors(detail: Any, path: str = "") -> list[dict[str, str | None]]:
    """DRF's nested error detail → [{"attr": "lines.0.quantity", "code": ..., "detail": ...}]."""
    if _is_error(detail):
        return [{"attr": path or None, "code": detail["code"], "detail": str(detail["message"])}]
    if isinstance(detail, dict):
        return [error for key, value in detail.items() for error in flatten_errors(value, _join(path, key))]
    if isinstance(detail, list):
        if all(_is_error(item) for item in detail):
            return [error for item in detail for error in flatten_errors(item, path)]
        return [error for i, item in enumerate(detail) for error in flatten_errors(item, _join(path, str(i)))]
    return [{"attr": path or None, "code": "invalid", "detail": str(detail)}]


def _is_error(detail: Any) -> bool:
    return isinstance(detail, dict) and set(detail) == {"message", "code"}


def _join(path: str, key: str) -> str:
    if key in ("non_field_errors", "__all__"):
        return path
    return f"{path}.{key}" if path else key


def problem_exception_handler(exc, context):
    """DRF's exception handler: every error of an API view as a problem details response.

    Unlike DRF's own, it also answers what is not an APIException: the database being unavailable
    is a 503 with Retry-After, and anything else (a bug) a 500 problem, logged with its traceback as
    Django logs one. Django would otherwise answer those itself, with its HTML debug page under DEBUG.
    """
    request = context.get("request")
    if isinstance(exc, REFUSED_CREDENTIALS) and request is not None:
        # DRF checks throttles after authentication and permissions: a request refused for its
        # credentials never reached them, and counts against its address here.
        try:
            exc = throttle_refused_credentials(request) or exc
        except DATABASE_UNAVAILABLE_ERRORS as unavailable:
            exc = unavailable
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        set_rollback()
        response = _database_unavailable_response(request, Response)
        log_response(
            "Database unavailable: %s: %s",
            _path(request),
            _first_line(exc),
            response=response,
            request=_django_request(request),
        )
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()

    if isinstance(exc, DomainError):
        set_rollback()
        body = problem(request, status=exc.status, slug=exc.slug, title=exc.title, detail=exc.detail, **exc.extensions)
        return Response(body, status=exc.status, content_type=PROBLEM_CONTENT_TYPE)

    if not isinstance(exc, exceptions.APIException):
        return _internal_error_response(request, exc)

    slug, title = next(
        ((slug, title) for cls, slug, title in _DRF_PROBLEMS if isinstance(exc, cls)),
        ("error", "Error"),
    )
    extensions: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        extensions["errors"] = flatten_errors(exc.get_full_details())
        detail = "The request has invalid fields."
    else:
        detail = str(exc.detail)
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
        extensions["retry_after"] = int(exc.wait)
    set_rollback()
    body = problem(request, status=exc.status_code, slug=slug, title=title, detail=detail, **extensions)
    return Response(body, status=exc.status_code, headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def _internal_error_response(request, exc: Exception) -> Response:
    """A bug in an API view: what Django does for an uncaught exception (got_request_exception, which
    the test client re-raises, and an error log with the traceback), with a problem body whatever
    DEBUG says."""
    django_request = _django_request(request)
    set_rollback()
    signals.got_request_exception.send(sender=None, request=django_request)
    response = Response(_internal_error(request), status=500, content_type=PROBLEM_CONTENT_TYPE)
    log_response(
        "%s: %s", "Internal Server Error", _path(request), response=response, request=django_request, exception=exc
    )
    return response


def _internal_error(request) -> dict[str, Any]:
    return problem(
        request,
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="Something went wrong on our side; it has been logged.",
    )


def _database_unavailable_response(request, response_class):
    # Not "nothing changed": a connection lost during COMMIT leaves the outcome unknown to us too.
    body = problem(
        request,
        status=503,
        slug="service-unavailable",
        title="Service unavailable",
        detail=(
            "The database cannot be reached right now. Retry after Retry-After seconds; "
            "retry an order with the same Idempotency-Key, so that it is never placed twice."
        ),
    )
    return response_class(
        body,
        status=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        content_type=PROBLEM_CONTENT_TYPE,
    )


def _django_request(request):
    return request._request if isinstance(request, Request) else request


def _path(request) -> str:
    return request.path if request is not None else ""


def _first_line(exc: Exception) -> str:
    return next(iter(str(exc).splitlines()), type(exc).__name__)


def not_found_view(request, exception=None):
    """handler404, and every /api/ path no route matches (see marketplace.urls): a problem, even under
    DEBUG, where Django would otherwise answer with its HTML page listing the routes."""
    body = problem(request, status=404, slug="not-found", title="Not found", detail="No such resource.")
    return JsonResponse(body, status=404, content_type=PROBLEM_CONTENT_TYPE)


def server_error_view(request):
    """handler500 (Django calls it when DEBUG is off; under DEBUG it shows its debug page instead).
    API views answer their own errors (problem_exception_handler); this is for everything else."""
    exc = sys.exc_info()[1]  # Django calls handler500 while handling the exception
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        return _database_unavailable_response(request, JsonResponse)
    return JsonResponse(_internal_error(request), status=500, content_type=PROBLEM_CONTENT_TYPE)
