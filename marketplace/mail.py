"""Sending a subscriber's email so that a failure is retried and names where the email went."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend as SMTPEmailBackend
from django.utils.module_loading import import_string

from marketplace import tracing
from marketplace.events.errors import TransientDownstreamError


class EmailNotSent(TransientDownstreamError):
    """The mail server did not take the message (an SMTP or socket error, chained): worth retrying."""


def send_email(message: EmailMessage, *, failure: str) -> None:
    """Send ``message``; if the mail server fails, raise EmailNotSent starting with ``failure``
    (who the email was for and ``mail_server()``)."""
    try:
        with tracing.sending_email(message):  # with tracing on, the email carries a traceparent header
            message.send()
    except OSError as exc:  # smtplib's errors are OSErrors, like the socket's
        raise EmailNotSent(f"{failure}: {type(exc).__name__}: {exc}") from exc


def mail_server() -> str:
    """Where email goes: the SMTP server, or the backend that stands in for one (console, tests)."""
    if issubclass(import_string(settings.EMAIL_BACKEND), SMTPEmailBackend):
        return f"mail server {settings.EMAIL_HOST}:{settings.EMAIL_PORT}"
    return f"email backend {settings.EMAIL_BACKEND}"
