"""Dead letters: the dead-letter queue is the record, FailedEvent is its projection.

A subscriber that gives up on a message publishes it to the dead-letter exchange with the failure
in its headers (exception, traceback, attempts, first and last failure time), so giving up needs
no database. RabbitMQ dead-letters the rest itself (a delivery limit reached by a message that
crashed its worker every time) with its ``x-death`` headers. Either way the exchange routes the
message to the subscriber's ``.dead`` queue, which keeps it while the failure is open, and to the
recorder's queue, from which ``record_dead_letters`` writes the FailedEvent row and acknowledges
only after that row committed: while the database is down nothing is acknowledged, nothing lost.

Resolving or archiving a failure removes its message from the ``.dead`` queue (``compact``), so
a dead-letter queue's depth is the number of open failures of its subscriber.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback as tb
import uuid
from datetime import UTC, datetime
from typing import Any

from django.core.mail import mail_admins
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone
from kombu import Connection, Producer

from marketplace.events import topology
from marketplace.events.failure_groups import grouping_fields
from marketplace.events.models import FailedEvent, FailedEventReplay

logger = logging.getLogger(__name__)

# Message headers a subscriber carries through its retries and onto its dead letter.
ATTEMPTS = "marketplace-attempts"
INFRA_WAITS = "marketplace-infra-waits"
WAITING_SINCE = "marketplace-waiting-since"
FIRST_FAILED_AT = "marketplace-first-failed-at"
LAST_FAILED_AT = "marketplace-last-failed-at"
EXCEPTION_CLASS = "marketplace-exception-class"
EXCEPTION_MESSAGE = "marketplace-exception-message"
TRACEBACK = "marketplace-traceback"
DEAD_LETTER_ID = "marketplace-dead-letter-id"
REPLAY_OF = "marketplace-replay-of"
FAILURE_HEADERS = (FIRST_FAILED_AT, LAST_FAILED_AT, EXCEPTION_CLASS, EXCEPTION_MESSAGE, TRACEBACK, DEAD_LETTER_ID)

# AMQP sends all headers in one frame (128 KiB by default): keep the failure well inside it.
MAX_MESSAGE_CHARS = 4_000
MAX_TRACEBACK_CHARS = 32_000
# What the database keeps of a message body; larger bodies stay whole in the dead-letter queue.
MAX_STORED_BODY_BYTES = 16 * 1024 * 1024
# The AMQP properties a republished message keeps (headers, content type and encoding aside).
KEPT_PROPERTIES = ("message_id", "correlation_id", "type", "app_id", "timestamp")
REMOVABLE = (FailedEvent.Status.RESOLVED, FailedEvent.Status.ARCHIVED, FailedEvent.Status.REPLAYING)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exception_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def failure_headers(
    *, exc: BaseException, traceback: str | None = None, attempts: int, first_failed_at: str | None = None
) -> dict[str, Any]:
    """What the admin shows of a failure, as message headers (strings and ints only)."""
    if traceback is None:
        traceback = "".join(tb.format_exception(exc))
    now = now_iso()
    return {
        ATTEMPTS: attempts,
        FIRST_FAILED_AT: first_failed_at or now,
        LAST_FAILED_AT: now,
        EXCEPTION_CLASS: exception_name(exc),
        EXCEPTION_MESSAGE: str(exc)[:MAX_MESSAGE_CHARS],
        TRACEBACK: traceback[-MAX_TRACEBACK_CHARS:],
        DEAD_LETTER_ID: str(uuid.uuid4()),
    }


def publish_raw(producer: Producer, message, *, subscriber: topology.Subscriber, headers: dict[str, Any]) -> None:
    """Dead-letter a message exactly as received (body bytes and properties), adding ``headers``."""
    republish(
        producer,
        message,
        exchange=topology.DEAD_LETTER_EXCHANGE.name,
        routing_key=subscriber.dead_letter_queue_name,
        headers={**without_broker_headers(message.headers or {}), **headers},
        mandatory=True,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 1, "interval_max": 2},
    )


def republish(producer: Producer, message, *, exchange: str, routing_key: str, headers: dict[str, Any], **options):
    """Publish a received message again, byte for byte with its properties, under ``headers``."""
    properties = message.properties or {}
    producer.publish(
        body_bytes(message),
        exchange=exchange,
        routing_key=routing_key,
        headers=headers,
        content_type=message.content_type or "application/octet-stream",
        content_encoding=message.content_encoding or "binary",
        serializer=None,
        delivery_mode=2,
        **{key: properties[key] for key in KEPT_PROPERTIES if key in properties},
        **options,
    )


def without_broker_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` without RabbitMQ's own (x-death, x-first-death-*, ...), for a new dead-lettering."""
    return {k: v for k, v in headers.items() if not k.startswith("x-")}


# --- the projection: message -> FailedEvent ----------------------------------------------------


def decoded_envelope(body: bytes, headers: dict[str, Any]) -> Any:
    """The event a dead letter carries: a raw envelope, or the first argument of a Celery task."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None
    if "task" in headers and isinstance(decoded, list) and decoded and isinstance(decoded[0], list | tuple):
        args = decoded[0]
        return args[0] if args else None
    return decoded


def event_uuid(envelope: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(envelope["id"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def safe_text(value: Any, limit: int | None = None) -> str:
    """Text PostgreSQL can hold: no NUL, no lone surrogates."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    text = str(value).replace("\x00", "\\x00").encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text[:limit] if limit else text


def safe_json(value: Any) -> Any:
    """``value`` if jsonb can hold it (no NUL escapes), else None."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return None
    return None if "\\u0000" in text else value


def jsonable_headers(headers: dict[str, Any]) -> dict[str, Any]:
    return json.loads(safe_text(json.dumps(headers, default=str)))


def dead_letter_key(body: bytes, headers: dict[str, Any]) -> str:
    """One dead-lettering of one message: the same key when the recorder sees it again."""
    if headers.get(DEAD_LETTER_ID):
        return str(headers[DEAD_LETTER_ID])
    deaths = headers.get("x-death") or [{}]
    first = deaths[0] if isinstance(deaths, list) and deaths else {}
    marker = json.dumps([first.get("time"), first.get("count"), first.get("reason"), first.get("queue")], default=str)
    return hashlib.sha256(body + marker.encode()).hexdigest()


def body_bytes(message) -> bytes:
    """The body as sent: py-amqp hands a text body over already decoded by its content encoding."""
    body = message.body
    if isinstance(body, bytes):
        return body
    return body.encode(message.content_encoding or "utf-8", errors="surrogateescape")


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def record_lookup(envelope: Any, body: bytes) -> tuple[uuid.UUID | None, dict[str, Any]]:
    """The event id of a dead letter, and the fields that find its FailedEvent among a
    subscriber's: the event id, or for a message without one, the digest of its body."""
    event_id = event_uuid(envelope)
    return event_id, {"event_id": event_id} if event_id else {"event_id": None, "body_digest": body_digest(body)}


def _broker_failure(headers: dict[str, Any]) -> tuple[str, str, int]:
    """(exception class, message, deliveries) for a message RabbitMQ dead-lettered by itself."""
    reason = headers.get("x-first-death-reason") or "unknown"
    queue = headers.get("x-first-death-queue") or "?"
    deliveries = int(headers.get("x-delivery-count") or 0)
    if reason == "delivery_limit":
        # RabbitMQ dead-letters a message once it has been returned more than the limit allows.
        deliveries = topology.DELIVERY_LIMIT + 1
        return (
            "marketplace.DeliveryLimitReached",
            f"delivery limit reached: {queue} delivered it {deliveries} times without an "
            "acknowledgement (its worker crashed, was killed or lost its connection each time)",
            deliveries,
        )
    return (f"marketplace.DeadLettered.{reason}", f"RabbitMQ dead-lettered it from {queue} ({reason})", deliveries)


def record(*, subscriber: topology.Subscriber, body: bytes, headers: dict[str, Any], content_type: str = "") -> bool:
    """Write (or update) the FailedEvent of one dead letter; False if it was already recorded."""
    envelope = decoded_envelope(body, headers)
    event_id, lookup = record_lookup(envelope, body)
    key = dead_letter_key(body, headers)
    if EXCEPTION_CLASS in headers:
        exception_class = safe_text(headers[EXCEPTION_CLASS], 200)
        exception_message = safe_text(headers.get(EXCEPTION_MESSAGE, ""))
        attempts = int(headers.get(ATTEMPTS) or 1)
    else:
        exception_class, exception_message, attempts = _broker_failure(headers)
    payload = safe_json(envelope) if isinstance(envelope, dict) else None
    now = timezone.now()
    fields = {
        "event_type": safe_text(envelope.get("type", ""), 100) if isinstance(envelope, dict) else "",
        "payload": payload,
        "raw_body": "" if payload is not None else safe_text(body[:100_000]),
        "body": body[:MAX_STORED_BODY_BYTES],
        "body_size": len(body),
        "content_type": safe_text(content_type, 100),
        "headers": jsonable_headers({k: v for k, v in headers.items() if k != TRACEBACK}),
        "dead_letter_key": key,
        "status": FailedEvent.Status.FAILED,
        "exception_class": exception_class,
        "exception_message": exception_message,
        "traceback": safe_text(headers.get(TRACEBACK, "")),
        "last_failed_at": parse_time(headers.get(LAST_FAILED_AT)) or now,
        "resolved_at": None,
        "in_dead_letter_queue": True,
        **grouping_fields(
            subscriber=subscriber.name, exception_class=exception_class, exception_message=exception_message
        ),
    }
    with transaction.atomic():
        failed = FailedEvent.objects.select_for_update().filter(subscriber=subscriber.name, **lookup).first()
        if failed is not None and failed.dead_letter_key == key:
            return False
        if failed is None:
            FailedEvent.objects.create(
                subscriber=subscriber.name,
                event_id=event_id,
                body_digest=body_digest(body),
                attempts=attempts,
                first_failed_at=parse_time(headers.get(FIRST_FAILED_AT)) or now,
                **fields,
            )
        else:
            FailedEvent.objects.filter(pk=failed.pk).update(attempts=failed.attempts + attempts, **fields)
            # A replay that failed again: its audit row says so.
            FailedEventReplay.objects.filter(
                failed_event=failed,
                action=FailedEventReplay.Action.REPLAY,
                outcome=FailedEventReplay.Outcome.PENDING,
            ).update(outcome=FailedEventReplay.Outcome.FAILED, finished_at=now)
    logger.error(
        "recorded dead letter of %s: event %s, %s: %s",
        subscriber.name,
        event_id or "(no id)",
        exception_class,
        exception_message[:500],
    )
    _alert(subscriber=subscriber, event_id=event_id, exception_class=exception_class, message=exception_message)
    return True


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _alert(*, subscriber: topology.Subscriber, event_id, exception_class: str, message: str) -> None:
    try:
        mail_admins(
            subject=f"[marketplace] {subscriber.name} failed event {event_id or '(unreadable message)'}",
            message=(
                f"Subscriber {subscriber.name} gave up on event {event_id or '(unreadable message)'}.\n"
                f"{exception_class}: {message[:2000]}\n\n"
                f"The message is in the dead-letter queue {subscriber.dead_letter_queue_name}; inspect and "
                "replay or archive it from the admin (Event bus > Failed events) or with "
                "`manage.py replay_failed_events`."
            ),
            fail_silently=True,
        )
    except Exception:  # an alert must never turn into a second failure
        logger.exception("could not alert admins about event %s", event_id)


# --- compaction: closed failures leave the dead-letter queue ----------------------------------


def compact(connection: Connection, subscriber: topology.Subscriber) -> int:
    """Remove the messages of resolved, archived and replayed failures from ``.dead``; keep one
    message per open failure. Returns how many messages were removed.

    A pass takes each message that was in the queue when it started: a closed failure's message
    is acknowledged (gone); an open one's is published again at the tail, confirmed, then
    acknowledged. A message the recorder has not recorded yet is kept.
    """
    closing = list(
        FailedEvent.objects.filter(
            subscriber=subscriber.name, in_dead_letter_queue=True, status__in=REMOVABLE
        ).values_list("pk", flat=True)
    )
    if not closing:
        return 0
    with transaction.atomic():
        if not _locked_for_compaction(subscriber):
            return 0
        channel = connection.channel()
        try:
            removed = _compaction_pass(channel, subscriber)
        finally:
            channel.close()
        FailedEvent.objects.filter(pk__in=closing, status__in=REMOVABLE).update(in_dead_letter_queue=False)
    if removed:
        logger.info("removed %d closed failure(s) from %s", removed, subscriber.dead_letter_queue_name)
    return removed


def _locked_for_compaction(subscriber: topology.Subscriber) -> bool:
    """One compaction per dead-letter queue at a time, across every recorder process; the lock is
    the transaction's (safe behind a transaction-pooling pgbouncer)."""
    key = int.from_bytes(hashlib.sha256(subscriber.dead_letter_queue_name.encode()).digest()[:8], "big") >> 1
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
        return cursor.fetchone()[0]


def _compaction_pass(channel, subscriber: topology.Subscriber) -> int:
    queue = subscriber.dead_letter_queue(channel)
    _, depth, _ = channel.queue_declare(queue=queue.name, passive=True)
    producer = Producer(channel)  # the recorder's connection confirms every publish
    kept: set[str] = set()
    removed = 0
    for _ in range(depth):
        message = queue.get(no_ack=False)
        if message is None:
            break
        headers = message.headers or {}
        body = body_bytes(message)
        _, lookup = record_lookup(decoded_envelope(body, headers), body)
        identity = str(lookup.get("body_digest") or lookup["event_id"])
        status = (
            FailedEvent.objects.filter(subscriber=subscriber.name, **lookup).values_list("status", flat=True).first()
        )
        if status is not None and (status in REMOVABLE or identity in kept):
            message.ack()
            removed += 1
            continue
        republish(producer, message, exchange="", routing_key=queue.name, headers=headers)
        message.ack()
        if status is not None:
            kept.add(identity)
    return removed
