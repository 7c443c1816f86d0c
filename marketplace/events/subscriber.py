"""What every subscriber shares: the Celery task base, exactly-once effects and failure records.

A subscriber is a plain handler function plus a thin task declared with ``subscriber_task``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from celery import Task
from django.conf import settings
from django.core.mail import mail_admins
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from marketplace.celery import app
from marketplace.events import topology
from marketplace.events.envelope import validate_envelope
from marketplace.events.models import FailedEvent, ProcessedEvent

logger = logging.getLogger(__name__)


class TransientDownstreamError(Exception):
    """A downstream answered 'try again later' (HTTP 5xx, 429): worth retrying."""


# Worth retrying: the network, SMTP (smtplib errors are OSErrors), HTTP transport errors and
# 5xx answers, and a database that is briefly unavailable. Everything else fails at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    httpx.TransportError,
    TransientDownstreamError,
    OperationalError,
    InterfaceError,
)


def claim_event(*, subscriber: str, event_id: str | uuid.UUID) -> bool:
    """Within the caller's transaction, mark the event handled; False if it already was.

    A concurrent duplicate blocks on the unique index until the first commits (then sees the
    marker) or rolls back (then takes over), so at most one effect is ever committed.
    """
    assert transaction.get_connection().in_atomic_block, "claim_event must run inside the effect's transaction"
    _, created = ProcessedEvent.objects.get_or_create(subscriber=subscriber, event_id=event_id)
    return created


class SubscriberTask(Task):
    """Base for subscriber tasks: records a FailedEvent and alerts when a message is given up."""

    subscriber: str = ""
    acks_late = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        envelope = args[0] if args else None
        record_failure(
            subscriber=self.subscriber,
            envelope=envelope,
            exc=exc,
            traceback=str(einfo),
            attempts=self.request.retries + 1,
        )

    def on_success(self, retval, task_id, args, kwargs):
        envelope = args[0] if args else {}
        FailedEvent.objects.filter(
            subscriber=self.subscriber,
            event_id=_event_uuid(envelope),
            status__in=[FailedEvent.Status.FAILED, FailedEvent.Status.REPLAYING],
        ).update(status=FailedEvent.Status.RESOLVED, resolved_at=timezone.now())


def subscriber_task(name: str) -> Callable[[Callable[[dict[str, Any]], Any]], Task]:
    """Declare the Celery task for subscriber ``name`` (see topology.SUBSCRIBERS).

    The decorated function receives a validated envelope. Retries follow the subscriber's policy
    in settings.SUBSCRIBER_RETRY and are published to the subscriber's own queue, never to the
    fanout exchange the event first came through.
    """
    subscriber = topology.subscriber_named(name)

    def decorate(run: Callable[[dict[str, Any]], Any]) -> Task:
        def task(envelope: dict[str, Any]) -> Any:
            return run(validate_envelope(envelope))

        task.__name__ = task.__qualname__ = run.__name__
        task.__doc__ = run.__doc__
        task.__module__ = run.__module__
        return app.task(
            task,
            name=subscriber.task,
            base=SubscriberTask,
            subscriber=name,
            autoretry_for=TRANSIENT_ERRORS,
            retry_kwargs={"queue": subscriber.queue_name},
            **settings.SUBSCRIBER_RETRY[name],
        )

    return decorate


def record_failure(
    *,
    subscriber: str,
    envelope: Any,
    exc: BaseException,
    traceback: str = "",
    attempts: int = 1,
    raw_body: str = "",
) -> FailedEvent | None:
    """Record (or update) the FailedEvent of a message given up on, and alert the team."""
    event_id = _event_uuid(envelope)
    event_type = envelope.get("type", "") if isinstance(envelope, dict) else ""
    now = timezone.now()
    fields = {
        "event_type": str(event_type)[:100],
        "payload": envelope if isinstance(envelope, (dict, list)) else None,
        "raw_body": raw_body,
        "status": FailedEvent.Status.FAILED,
        "exception_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "exception_message": str(exc),
        "traceback": traceback,
        "attempts": attempts,
        "last_failed_at": now,
        "resolved_at": None,
    }
    logger.error(
        "subscriber %s gave up on event %s after %d attempt(s): %s: %s",
        subscriber,
        event_id or "(no id)",
        attempts,
        type(exc).__name__,
        exc,
    )
    failed = None
    try:
        if event_id is None:
            failed = FailedEvent.objects.create(subscriber=subscriber, **fields)
        else:
            with transaction.atomic():
                failed, created = FailedEvent.objects.select_for_update().get_or_create(
                    subscriber=subscriber, event_id=event_id, defaults=fields
                )
                if not created:
                    fields["attempts"] = failed.attempts + attempts
                    FailedEvent.objects.filter(pk=failed.pk).update(**fields)
    except DatabaseError:
        logger.exception("could not record the failure of event %s for %s", event_id, subscriber)
    _alert(subscriber=subscriber, event_id=event_id, exc=exc, attempts=attempts)
    return failed


def _alert(*, subscriber: str, event_id: uuid.UUID | None, exc: BaseException, attempts: int) -> None:
    try:
        mail_admins(
            subject=f"[marketplace] {subscriber} failed event {event_id or '(unreadable message)'}",
            message=(
                f"Subscriber {subscriber} gave up on event {event_id} after {attempts} attempt(s).\n"
                f"{type(exc).__name__}: {exc}\n\n"
                f"It is in the dead-letter queue {topology.subscriber_named(subscriber).dead_letter_queue_name};"
                " inspect and replay it from the admin (Event bus > Failed events) or with"
                " `manage.py replay_failed_events`."
            ),
            fail_silently=True,
        )
    except Exception:  # an alert must never turn into a second failure
        logger.exception("could not alert admins about event %s", event_id)


def _event_uuid(envelope: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(envelope["id"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
