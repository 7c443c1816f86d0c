"""Errors a client can cause. marketplace.problems turns each into an RFC 9457 problem response."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, **extensions: Any):
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class InvalidInput(DomainError):
    """Input that looked right but does not hold against the database (e.g. an inactive product)."""

    status = 400
    slug = "validation-error"
    title = "Invalid request"

    def __init__(self, errors: list[dict[str, str]], detail: str = "The request has invalid fields."):
        super().__init__(detail, errors=errors)


class NotFound(DomainError):
    """An unknown resource, or someone else's: the same problem for both, so that nobody learns
    which ids exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class UnprocessableRequest(DomainError):
    status = 422
    slug = "unprocessable-request"
    title = "Unprocessable request"
