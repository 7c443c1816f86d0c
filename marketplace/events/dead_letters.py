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

import contextlib
import functools
import hashlib
import json
import logging
import math
import time
import traceback as tb
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.mail import mail_admins
from django.db import connection as db_connection
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone
from kombu import Connection, Producer, Queue

from marketplace.events import topology
from marketplace.events.failure_groups import grouping_fields
from marketplace.events.headers import (
    ATTEMPTS,
    DEAD_LETTER_ID,
    EXCEPTION_CLASS,
    EXCEPTION_MESSAGE,
    FIRST_FAILED_AT,
    LAST_FAILED_AT,
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    ORIGINAL_HEADERS,
    PARK_REASON,
    TRACEBACK,
    exception_name,
)
from marketplace.events.models import FailedEvent, FailedEventReplay
from marketplace.events.outages import is_database_outage
from marketplace.internals import amqp as amqp_internals

logger = logging.getLogger(__name__)

# What the database keeps of a message body; larger bodies stay whole in the dead-letter queue.
MAX_STORED_BODY_BYTES = 16 * 1024 * 1024
# Nesting kept of a header table; deeper levels are stored as text.
MAX_HEADER_DEPTH = 32
# Counts read from headers (attempts, deliveries) fit the database's integer columns.
MAX_COUNT = 2**31 - 1
# The AMQP properties a republished message keeps (headers, content type and encoding aside).
KEPT_PROPERTIES = ("message_id", "correlation_id", "type", "app_id", "timestamp")
# Not stored with a record: the traceback has a field of its own, and Celery's argsrepr and
# kwargsrepr repeat the envelope the record keeps already.
NOT_STORED_HEADERS = frozenset({TRACEBACK, "argsrepr", "kwargsrepr"})


def publish_raw(producer: Producer, message: Any, *, subscriber: topology.Subscriber, headers: dict[str, Any]) -> None:
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


def republish(
    producer: Producer, message: Any, *, exchange: str, routing_key: str, headers: dict[str, Any], **options: Any
) -> None:
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
    return {k: v for k, v in headers.items() if not (isinstance(k, str) and k.startswith("x-"))}


# --- the projection: message -> FailedEvent ----------------------------------------------------


def decoded_envelope(body: bytes, headers: dict[str, Any]) -> Any:
    """The event a dead letter carries: a raw envelope, or the first argument of a Celery task;
    None for anything else. Any failure to read the bytes means "no event": json raises more
    than ValueError on untrusted input (RecursionError for deep nesting)."""
    try:
        decoded = json.loads(body)
    except Exception:
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


class JsonText(str):
    """JSON already written, checked to be what jsonb holds: stored as it is (``%s::jsonb``)."""


def json_text(value: Any) -> JsonText | None:
    """``value`` as JSON text if jsonb can hold it, else None: no NUL, no lone surrogate, no NaN
    or infinity (Python's json reads them all; PostgreSQL refuses them). Written once: the record
    stores this text rather than having the database driver encode the value again."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate cannot be encoded
    except Exception:  # anything json cannot write (deep nesting raises RecursionError)
        return None
    return None if "\\u0000" in text else JsonText(text)


def jsonable_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers as JSON PostgreSQL can hold, whatever AMQP types they arrived as (bytes keys and
    values, decimals, timestamps, nested tables and arrays)."""
    jsonable: dict[str, Any] = _jsonable(headers)
    return jsonable


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > MAX_HEADER_DEPTH:
        return safe_text(repr(value), 1000)
    if isinstance(value, dict):
        return {safe_text(key, 1000): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item, depth + 1) for item in value]
    if isinstance(value, str | bytes | bytearray | memoryview):
        return safe_text(bytes(value) if not isinstance(value, str) else value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return safe_text(str(value), 1000)  # decimals, timestamps, whatever else a header decodes to


def header_int(headers: dict[str, Any], name: str, default: int = 0) -> int:
    """An integer header as a count we can store, whatever a publisher put there."""
    value = headers.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str | bytes):
        return default
    try:
        number = int(value)
    except ValueError:
        return default
    return number if 0 <= number <= MAX_COUNT else default


def header_text(headers: dict[str, Any], name: str, default: str = "") -> str:
    value = headers.get(name)
    return default if value is None or isinstance(value, dict | list) else safe_text(value)


def dead_letter_key(body: bytes, headers: dict[str, Any]) -> str:
    """One dead-lettering of one message: the same key when the recorder sees it again."""
    if header_text(headers, DEAD_LETTER_ID):
        return header_text(headers, DEAD_LETTER_ID)[:64]
    deaths = headers.get("x-death") or [{}]
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    marker = json.dumps(
        _jsonable([first.get("time"), first.get("count"), first.get("reason"), first.get("queue")]), default=str
    )
    return hashlib.sha256(body + marker.encode("utf-8", errors="backslashreplace")).hexdigest()


def body_bytes(message: Any) -> bytes:
    """The body as sent: py-amqp hands a text body over already decoded by its content encoding."""
    body: bytes | str = message.body
    if isinstance(body, bytes):
        return body
    if not body:  # py-amqp gives a message without a body "" (text), whatever its encoding
        return b""
    try:
        return body.encode(message.content_encoding or "utf-8", errors="surrogateescape")
    except Exception:  # an encoding that decodes but cannot encode back (idna, ...)
        return body.encode("utf-8", errors="surrogatepass")


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def record_lookup(envelope: Any, body: bytes) -> tuple[uuid.UUID | None, dict[str, Any]]:
    """The event id of a dead letter, and the fields that find its FailedEvent among a
    subscriber's: the event id, or for a message without one, the digest of its body."""
    event_id = event_uuid(envelope)
    return event_id, {"event_id": event_id} if event_id else {"event_id": None, "body_digest": body_digest(body)}


def _broker_failure(headers: dict[str, Any]) -> tuple[str, str, int]:
    """(exception class, message, deliveries) for a message RabbitMQ dead-lettered by itself."""
    reason = header_text(headers, "x-first-death-reason", "unknown")[:100]
    queue = header_text(headers, "x-first-death-queue", "?")[:300]
    deliveries = header_int(headers, "x-delivery-count")
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


class Unrecordable(Exception):
    """The database refused even the plainest record of a dead letter (not an outage)."""


@dataclass
class Failure:
    """What one dead letter's FailedEvent says, read from the message (see read)."""

    subscriber: topology.Subscriber
    event_id: uuid.UUID | None
    digest: str
    attempts: int
    first_failed_at: datetime
    fields: dict[str, Any]
    # Kept to fall back on a plainer record if the database refuses this one.
    body: bytes = b""
    content_type: Any = ""


def read(*, subscriber: topology.Subscriber, body: bytes, headers: Any, content_type: Any = "") -> Failure:
    """The record of one dead letter, whatever the message holds: one that cannot be read is
    recorded as unreadable, with its bytes and what went wrong. Never raises."""
    try:
        return read_failure(subscriber=subscriber, body=body, headers=headers, content_type=content_type)
    except Exception as exc:
        logger.exception("a dead letter of %s could not be read; recording it as unreadable", subscriber.name)
        return unreadable_failure(subscriber=subscriber, body=body, content_type=content_type, exc=exc)


def record(
    *, subscriber: topology.Subscriber, body: bytes, headers: Any, content_type: Any = "", alerts: Alerts | None = None
) -> bool:
    """Write (or update) the FailedEvent of one dead letter; False if it was already recorded.

    Raises only for an outage of our own database (outages.is_database_outage: wait and try
    again) and Unrecordable. Alerts at once unless given ``alerts`` to collect into.
    """
    return record_failure(read(subscriber=subscriber, body=body, headers=headers, content_type=content_type), alerts)


def record_failure(failure: Failure, alerts: Alerts | None = None) -> bool:
    """Write one read failure; if the database refuses it (not an outage), its plainest record."""
    pending = Alerts() if alerts is None else alerts
    try:
        [created] = write_failures([failure], pending)
    except Exception as exc:
        if is_database_outage(exc):
            raise
        if failure.fields["exception_class"] == UNREADABLE:
            raise Unrecordable(f"{exception_name(exc)}: {exc}") from exc
        logger.exception(
            "the database refused the record of a dead letter of %s; recording it as unreadable",
            failure.subscriber.name,
        )
        plainer = unreadable_failure(
            subscriber=failure.subscriber, body=failure.body, content_type=failure.content_type, exc=exc
        )
        try:
            [created] = write_failures([plainer], pending)
        except Exception as again:
            if is_database_outage(again):
                raise
            raise Unrecordable(f"{exception_name(again)}: {again}") from again
    if alerts is None:
        pending.send()
    return created


def read_failure(*, subscriber: topology.Subscriber, body: bytes, headers: Any, content_type: Any) -> Failure:
    if not isinstance(headers, dict):
        raise TypeError(f"headers are {type(headers).__name__}, not a table")
    envelope = decoded_envelope(body, headers)
    event_id = event_uuid(envelope)
    if EXCEPTION_CLASS in headers:
        exception_class = header_text(headers, EXCEPTION_CLASS)[:200]
        exception_message = header_text(headers, EXCEPTION_MESSAGE)
        attempts = max(header_int(headers, ATTEMPTS, 1), 1)
    else:
        exception_class, exception_message, attempts = _broker_failure(headers)
    payload = json_text(envelope) if isinstance(envelope, dict) else None
    stored_headers = {k: v for k, v in headers.items() if k not in NOT_STORED_HEADERS}
    now = timezone.now()
    event_type = envelope.get("type", "") if isinstance(envelope, dict) else ""
    fields = {
        "event_type": safe_text(event_type, 100) if isinstance(event_type, str) else "",
        "payload": payload,
        "raw_body": "" if payload is not None else safe_text(body[:100_000]),
        "body": body[:MAX_STORED_BODY_BYTES],
        "body_size": len(body),
        "content_type": safe_text(content_type or "", 100),
        "headers": JsonText(json.dumps(jsonable_headers(stored_headers))),
        "dead_letter_key": dead_letter_key(body, headers),
        "status": FailedEvent.Status.FAILED,
        "exception_class": exception_class,
        "exception_message": exception_message,
        "traceback": header_text(headers, TRACEBACK),
        "last_failed_at": parse_time(headers.get(LAST_FAILED_AT)) or now,
        "resolved_at": None,
        "in_dead_letter_queue": True,
        **grouping_fields(
            subscriber=subscriber.name, exception_class=exception_class, exception_message=exception_message
        ),
    }
    return Failure(
        subscriber=subscriber,
        event_id=event_id,
        digest=body_digest(body),
        attempts=attempts,
        first_failed_at=parse_time(headers.get(FIRST_FAILED_AT)) or now,
        fields=fields,
        body=body,
        content_type=content_type,
    )


UNREADABLE = "marketplace.UnreadableDeadLetter"


def unreadable_failure(
    *, subscriber: topology.Subscriber, body: bytes, content_type: Any, exc: BaseException
) -> Failure:
    """The plainest record of a dead letter: its bytes and why it could not be read. Nothing of
    it is taken from the message's headers or parsed from its body."""
    now = timezone.now()
    message = f"the recorder could not read this dead letter: {exception_name(exc)}: {safe_text(exc, 2000)}"
    digest = body_digest(body)
    return Failure(
        subscriber=subscriber,
        event_id=None,
        digest=digest,
        attempts=1,
        first_failed_at=now,
        body=body,
        content_type=content_type,
        fields={
            "event_type": "",
            "payload": None,
            "raw_body": safe_text(body[:100_000]),
            "body": body[:MAX_STORED_BODY_BYTES],
            "body_size": len(body),
            "content_type": safe_text(content_type, 100) if isinstance(content_type, str | bytes) else "",
            "headers": JsonText("{}"),
            "dead_letter_key": digest,
            "status": FailedEvent.Status.FAILED,
            "exception_class": UNREADABLE,
            "exception_message": message,
            "traceback": safe_text("".join(tb.format_exception(exc)))[-MAX_TRACEBACK_CHARS:],
            "last_failed_at": now,
            "resolved_at": None,
            "in_dead_letter_queue": True,
            **grouping_fields(subscriber=subscriber.name, exception_class=UNREADABLE, exception_message=message),
        },
    )


def write_failures(failures: list[Failure], alerts: Alerts) -> list[bool]:
    """Insert or update the records of several dead letters in one transaction, one statement
    each; for each, False if it was recorded already (same dead-lettering). Raises any database
    error: the caller retries an outage and records one at a time otherwise."""
    connection = transaction.get_connection()
    written: list[tuple[Failure, bool]] = []
    with transaction.atomic(), connection.cursor() as cursor:
        for failure in failures:
            sql, fields = _upsert_statement(failure.event_id is not None)
            values = {
                "subscriber": failure.subscriber.name,
                "event_id": failure.event_id,
                "body_digest": failure.digest,
                "attempts": failure.attempts,
                "first_failed_at": failure.first_failed_at,
                **failure.fields,
            }
            cursor.execute(
                sql,
                [
                    value if isinstance(value, JsonText) else field.get_db_prep_save(value, connection)
                    for field, value in ((field, values[field.name]) for field in fields)
                ],
            )
            row = cursor.fetchone()
            written.append((failure, row is not None))
            if row is not None and not row[1]:
                # A replay that failed again: its audit row says so.
                FailedEventReplay.objects.finish_pending(failed_event_id=row[0], succeeded=False)
    for failure, created in written:
        if created:
            logger.error(
                "recorded dead letter of %s: event %s, %s: %s",
                failure.subscriber.name,
                failure.event_id or "(no id)",
                failure.fields["exception_class"],
                failure.fields["exception_message"][:500],
            )
            alerts.add(failure)
    return [created for _, created in written]


@functools.cache
def _upsert_statement(has_event_id: bool) -> tuple[str, list[models.Field[Any, Any]]]:
    """INSERT the record, or update the one of the same (subscriber, event id), or for a message
    without an id the same (subscriber, body digest), unless it holds this very dead-lettering.
    RETURNING (id, inserted) for a write, nothing when it was recorded already. One statement:
    the unique index settles a race between recorders, and the ORM's SELECT FOR UPDATE, INSERT or
    UPDATE cost several times the database's own work per dead letter (bench/recorder.py)."""
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    fields = [field for field in FailedEvent._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(quote(field.column) for field in fields)
    kept = {"subscriber", "event_id", "body_digest", "first_failed_at", "attempts"}
    updates = ", ".join(
        f"{quote(field.column)} = EXCLUDED.{quote(field.column)}" for field in fields if field.name not in kept
    )
    key = "event_id" if has_event_id else "body_digest"
    where = "IS NOT NULL" if has_event_id else "IS NULL"
    # JSON arrives as text written once (JsonText): the cast makes it jsonb.
    placeholders = ", ".join("%s::jsonb" if isinstance(field, models.JSONField) else "%s" for field in fields)
    sql = (
        # S608: names come from the model (quoted), values are parameters.
        f"INSERT INTO {quote(FailedEvent._meta.db_table)} AS f ({columns}) VALUES ({placeholders}) "  # noqa: S608
        f'ON CONFLICT ("subscriber", "{key}") WHERE "event_id" {where} DO UPDATE SET {updates}, '
        f'"attempts" = LEAST(f."attempts" + EXCLUDED."attempts", {MAX_COUNT}) '
        'WHERE f."dead_letter_key" IS DISTINCT FROM EXCLUDED."dead_letter_key" '
        'RETURNING f."id", (f.xmax = 0)'
    )
    return sql, fields


class Alerts:
    """Failures recorded, to alert the team about once they committed: one email per failure
    group (subscriber, exception, message pattern), at most every DEAD_LETTER_ALERT_SECONDS per
    group, saying how many failed since the last one. A backlog of 10,000 dead letters from one
    outage is one email, not 10,000 (each its own SMTP session in the recorder's loop)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Failure]] = {}
        self._last_sent: dict[str, float] = {}

    def add(self, failure: Failure) -> None:
        self._waiting.setdefault(failure.fields["group_key"], []).append(failure)

    def send(self, *, all_waiting: bool = False) -> None:
        """Alert each group whose window has passed; ``all_waiting``: every group (the recorder is
        stopping, and what it recorded must not go unannounced)."""
        now = time.monotonic()
        for group, failures in list(self._waiting.items()):
            if not all_waiting and now - self._last_sent.get(group, -math.inf) < settings.DEAD_LETTER_ALERT_SECONDS:
                continue
            del self._waiting[group]
            self._last_sent[group] = now
            _alert(failures)


def _alert(failures: list[Failure]) -> None:
    first = failures[0]
    subscriber = first.subscriber
    event = first.event_id or "(unreadable message)"
    more = f" and {len(failures) - 1} more like it" if len(failures) > 1 else ""
    try:
        mail_admins(
            subject=f"[marketplace] {subscriber.name} failed event {event}{more}",
            message=(
                f"Subscriber {subscriber.name} gave up on event {event}{more}.\n"
                f"{first.fields['exception_class']}: {first.fields['exception_message'][:2000]}\n\n"
                f"The messages are in the dead-letter queue {subscriber.dead_letter_queue_name}; inspect and "
                "replay or archive them from the admin (Event bus > Failed events, or its failure groups) or "
                "with `manage.py replay_failed_events`. Further failures like it are alerted at most every "
                f"{settings.DEAD_LETTER_ALERT_SECONDS:.0f} s."
            ),
            fail_silently=True,
        )
    except Exception:  # an alert must never turn into a second failure
        logger.exception("could not alert admins about event %s", event)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 header as an aware datetime (UTC if it names no zone); None if it is not one."""
    if not isinstance(value, str | bytes) or not value:
        return None
    try:
        moment = datetime.fromisoformat(safe_text(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def park(connection: Connection, message: Any, *, reason: str) -> None:
    """Set a message aside in the parked queue, with why, and alert: for what cannot be recorded.

    Published with the message's bytes and, where they can be written back, its headers; raises
    only if the broker connection fails (the message is then still unacknowledged).
    """
    logger.error("parking a dead letter in %s: %s", topology.PARKED_QUEUE_NAME, reason)
    producer = Producer(connection.default_channel)
    headers = message.headers if isinstance(message.headers, dict) else {}
    try:
        republish(
            producer,
            message,
            exchange="",
            routing_key=topology.PARKED_QUEUE_NAME,
            headers={**without_broker_headers(headers), PARK_REASON: safe_text(reason, MAX_MESSAGE_CHARS)},
        )
    except connection.connection_errors:
        raise
    except Exception:
        producer.publish(
            body_bytes(message),
            exchange="",
            routing_key=topology.PARKED_QUEUE_NAME,
            headers={
                PARK_REASON: safe_text(reason, MAX_MESSAGE_CHARS),
                ORIGINAL_HEADERS: safe_text(repr(headers), MAX_MESSAGE_CHARS),
            },
            content_type="application/octet-stream",
            content_encoding="binary",
            serializer=None,
            delivery_mode=2,
        )
    try:
        mail_admins(
            subject="[marketplace] a dead letter could not be recorded",
            message=(
                f"The dead-letter recorder could not record a message: {reason}\n\n"
                f"It is in the queue {topology.PARKED_QUEUE_NAME}, with that reason in its "
                f"{PARK_REASON} header, and the metric marketplace_parked_dead_letters counts it. "
                "Inspect it in the RabbitMQ management UI (Queues > Get messages)."
            ),
            fail_silently=True,
        )
    except Exception:  # an alert must never turn into a second failure
        logger.exception("could not alert admins about a parked dead letter")


# --- compaction: closed failures leave the dead-letter queue ----------------------------------


def compact(connection: Connection, subscriber: topology.Subscriber) -> int:
    """Remove the messages of resolved, archived and replayed failures from ``.dead``, keep one
    message per open failure, and record any message found there without a record. Returns how
    many messages were removed.

    A pass takes each message that was in the queue when it started: a closed failure's message
    is acknowledged (gone); an open one's is published again at the tail, confirmed, then
    acknowledged. A message with no record (published straight to the queue, or left by an older
    release or another deployment) is recorded first, so that the queue's depth, which the
    dead-letter alerts watch, is always a count of failures an operator can see.
    """
    closing = list(
        FailedEvent.objects.filter(subscriber=subscriber.name, in_dead_letter_queue=True)
        .leaving_dead_letter_queue()
        .values_list("pk", flat=True)
    )
    if not closing and not _may_hold_unrecorded(connection, subscriber):
        return 0
    with transaction.atomic():
        if not _locked_for_compaction(subscriber):
            return 0
        channel = amqp_internals.raw_bodies(connection.channel())
        try:
            removed = _compaction_pass(channel, subscriber, connection.connection_errors)
        finally:
            channel.close()
        FailedEvent.objects.filter(pk__in=closing).leaving_dead_letter_queue().update(in_dead_letter_queue=False)
    if removed:
        logger.info("removed %d closed failure(s) from %s", removed, subscriber.dead_letter_queue_name)
    return removed


def _may_hold_unrecorded(connection: Connection, subscriber: topology.Subscriber) -> bool:
    """More messages in ``.dead`` than open failures say are there, with the recorder's inbox
    empty (a backlog there explains the difference until it is recorded)."""
    # A py-amqp Channel: kombu's StdChannel stub has none of its methods, amqp-stubs' queue_declare returns None.
    channel: Any = connection.channel()
    depth: int  # message counts of the passive declares
    inbox: int
    try:
        _, depth, _ = channel.queue_declare(queue=subscriber.dead_letter_queue_name, passive=True)
        if not depth:
            return False
        _, inbox, _ = channel.queue_declare(queue=topology.RECORDER_QUEUE_NAME, passive=True)
    except connection.channel_errors:
        return False  # a queue is missing: the topology check reports it, the relay heals it
    finally:
        with contextlib.suppress(*connection.connection_errors, *connection.channel_errors):
            channel.close()
    if inbox:
        return False
    held = FailedEvent.objects.filter(
        subscriber=subscriber.name, in_dead_letter_queue=True, status=FailedEvent.Status.FAILED
    ).count()
    return depth > held


def _locked_for_compaction(subscriber: topology.Subscriber) -> bool:
    """One compaction per dead-letter queue at a time, across every recorder process; the lock is
    the transaction's (safe behind a transaction-pooling pgbouncer)."""
    key = int.from_bytes(hashlib.sha256(subscriber.dead_letter_queue_name.encode()).digest()[:8], "big") >> 1
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
        locked: bool = cursor.fetchone()[0]
        return locked


def _compaction_pass(
    channel: Any, subscriber: topology.Subscriber, broker_errors: tuple[type[BaseException], ...]
) -> int:
    queue = subscriber.dead_letter_queue(channel)
    _, depth, _ = channel.queue_declare(queue=queue.name, passive=True)
    producer = Producer(channel)  # the recorder's connection confirms every publish
    kept: set[str] = set()
    removed = 0
    for _ in range(depth):
        message = queue.get(no_ack=False)
        if message is None:
            break
        try:
            removed += _compact_one(producer, queue, message, subscriber, kept, broker_errors)
        except broker_errors:
            raise
        except Unrecordable as exc:
            logger.error("%s holds a dead letter that cannot be recorded (%s); leaving it there", queue.name, exc)
        except Exception as exc:
            if is_database_outage(exc):
                raise
            # Left unacknowledged: back in the queue when the channel closes, for the next pass.
            logger.exception("could not compact a message of %s; leaving it there", queue.name)
    return removed


def _compact_one(
    producer: Producer,
    queue: Queue,
    message: Any,
    subscriber: topology.Subscriber,
    kept: set[str],
    broker_errors: tuple[type[BaseException], ...],
) -> int:
    headers = message.headers if isinstance(message.headers, dict) else {}
    body = body_bytes(message)
    digest = body_digest(body)
    _, lookup = record_lookup(decoded_envelope(body, headers), body)
    records = FailedEvent.objects.filter(subscriber=subscriber.name).filter(Q(**lookup) | Q(body_digest=digest))
    status = records.values_list("status", flat=True).first()
    if status is None:
        logger.error("%s holds a dead letter with no record; recording it", queue.name)
        record(subscriber=subscriber, body=body, headers=headers, content_type=message.content_type or "")
        status = records.values_list("status", flat=True).first()
    identity = str(lookup.get("body_digest") or lookup["event_id"])
    if status is not None and (status in FailedEvent.LEAVES_DEAD_LETTER_QUEUE or identity in kept):
        message.ack()
        return 1
    try:
        republish(producer, message, exchange="", routing_key=queue.name, headers=headers)
    except broker_errors:
        raise
    except Exception:
        # Headers py-amqp read but cannot write back (a key that is not text): keep them as JSON.
        republish(producer, message, exchange="", routing_key=queue.name, headers=jsonable_headers(headers))
    message.ack()
    if status is not None:
        kept.add(identity)
    return 0
