"""Publishes outbox rows to the events fanout exchange with publisher confirms.

Two callers share this module: the on-commit hook right after an order commits (fast path) and
the relay (``manage.py relay_outbox``), which picks up whatever the fast path could not publish.
A row counts as published only once the broker confirmed it and did not return it as unroutable.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DurationField, ExpressionWrapper, F, Q, Value
from django.db.models.functions import Least, Power
from django.utils import timezone
from kombu import Connection, Producer

from marketplace.events import topology
from marketplace.events.models import OutboxEvent

logger = logging.getLogger(__name__)


class Unroutable(RuntimeError):
    """The broker returned the message: no queue is bound to the exchange."""


@dataclass
class PublishResult:
    outbox_id: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def connect_once(connection: Connection) -> Connection:
    """Connect with one attempt per broker host and no sleep; raise if every host failed.

    BROKER_URL may list several hosts separated by ";" (a cluster): kombu then moves to the next
    host after each failed attempt and sleeps only once a whole round has failed, so
    ``max_retries = hosts - 1`` is exactly one round. (``max_retries=0`` would try the first host
    only, and Connection.connect() retries after sleeping 2 seconds, which would hold every order
    that long while the broker is down.) Each attempt is bounded by the connection's connect_timeout.
    """
    return connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1)


def event_message(envelope: dict) -> tuple[bytes, dict]:
    """Body and AMQP properties (headers included) of an event, as every publisher sends it:
    the on-commit publish, the relay and a backfill."""
    body = json.dumps(envelope, separators=(",", ":")).encode()
    properties = {
        "delivery_mode": 2,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "message_id": envelope["id"],
        "correlation_id": envelope.get("correlation_id"),
        "type": envelope["type"],
        "app_id": envelope.get("source"),
        "timestamp": int(time.time()),
        "headers": {"event_type": envelope["type"], "event_version": envelope["version"]},
    }
    return body, properties


class BrokerPublisher:
    """One broker connection with a confirming channel; not thread-safe (one per thread)."""

    def __init__(self, url: str | None = None, timeout: float | None = None):
        self.url = url or settings.BROKER_URL
        self.timeout = settings.EVENTS_PUBLISH_TIMEOUT if timeout is None else timeout
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._returned: set[str] = set()

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            connection = Connection(
                self.url,
                connect_timeout=self.timeout,
                # Every socket read and write is bounded too, so no declare or confirm waits forever.
                transport_options={
                    "confirm_publish": True,
                    "read_timeout": self.timeout,
                    "write_timeout": self.timeout,
                },
                heartbeat=0,
            )
            connect_once(connection)
            try:
                topology.declare(connection, settings.SUBSCRIBER_RETRY_DELAYS)
            except Exception:
                connection.release()
                raise
            self._connection = connection
            self._producer = Producer(
                connection.default_channel,
                exchange=topology.EVENTS_EXCHANGE,
                on_return=self._on_return,
            )
        return self._producer

    def _on_return(self, exception, exchange, routing_key, message):
        self._returned.add(message.properties.get("message_id"))

    def publish(self, envelope: dict) -> None:
        """Publish one envelope and wait for the broker's confirm; raise on any failure.

        A cached connection may have gone stale (the broker restarted since the last publish), so
        a failure on a reused connection gets one more try on a fresh one.
        """
        reused = self._producer is not None
        try:
            self._publish_once(envelope)
        except Unroutable:
            raise
        except Exception:
            if not reused:
                raise
            logger.info("broker connection went stale; publishing event %s on a new one", envelope["id"])
            self._publish_once(envelope)

    def _publish_once(self, envelope: dict) -> None:
        producer = self._ensure_producer()
        event_id = envelope["id"]
        self._returned.discard(event_id)
        try:
            body, properties = event_message(envelope)
            producer.publish(
                body,
                routing_key="",
                mandatory=True,
                serializer=None,
                timeout=self.timeout,
                confirm_timeout=self.timeout,
                **properties,
            )
        except Exception:
            self.close()
            raise
        if event_id in self._returned:
            raise Unroutable(f"event {event_id} was returned by the broker: no queue is bound")

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # the connection is already broken; nothing left to release
                logger.debug("error while closing a broken broker connection", exc_info=True)
        self._connection = self._producer = None


_local = threading.local()
_cooldown_until = 0.0


def thread_publisher() -> BrokerPublisher:
    if getattr(_local, "publisher", None) is None:
        _local.publisher = BrokerPublisher()
    return _local.publisher


def publish_rows(
    rows: list[tuple[int, dict]], publisher: BrokerPublisher, *, deadline: float | None = None
) -> list[PublishResult]:
    """Publish (outbox id, envelope) pairs in order; record every outcome on the rows.

    Rows not reached by ``deadline`` (a time.monotonic() value) are handed back unclaimed and
    unattempted, so a slow broker cannot keep a batch busy past its claim and get it published twice.
    The first row is always tried, so every call makes progress.
    """
    results = []
    broker_error = ""
    for index, (outbox_id, envelope) in enumerate(rows):
        if index and deadline is not None and time.monotonic() > deadline:
            unreached = [row_id for row_id, _ in rows[index:]]
            OutboxEvent.objects.filter(id__in=unreached, published_at__isnull=True).update(claimed_until=None)
            break
        if broker_error:
            # The broker is unreachable: the rest of the batch waits for the next attempt.
            results.append(PublishResult(outbox_id, error=broker_error))
            continue
        try:
            publisher.publish(envelope)
            results.append(PublishResult(outbox_id))
        except Unroutable as exc:
            logger.error("outbox %s: %s", outbox_id, exc)
            results.append(PublishResult(outbox_id, error=f"Unroutable: {exc}"))
        except Exception as exc:
            logger.warning("outbox %s: publish failed: %r", outbox_id, exc)
            broker_error = f"{type(exc).__name__}: {exc}"
            results.append(PublishResult(outbox_id, error=broker_error))
    record_results(results)
    return results


def record_results(results: list[PublishResult]) -> None:
    now = timezone.now()
    published = [r.outbox_id for r in results if r.ok]
    if published:
        with transaction.atomic():
            # Not worth an fsync of its own: if a crash loses this mark, the row is published
            # again once its claim lapses, and subscribers dedupe the second delivery.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            OutboxEvent.objects.filter(id__in=published, published_at__isnull=True).update(
                published_at=now,
                claimed_until=None,
                attempts=F("attempts") + 1,
                last_attempt_at=now,
                last_error="",
            )
    failed_by_error: dict[str, list[int]] = defaultdict(list)
    for result in results:
        if not result.ok:
            failed_by_error[result.error].append(result.outbox_id)
    # Exponential backoff per row (by its own attempt count); a row stays pending, never dropped.
    backoff = ExpressionWrapper(
        Value(timedelta(seconds=1)) * Least(Power(2, F("attempts")), Value(settings.OUTBOX_RETRY_MAX_SECONDS)),
        output_field=DurationField(),
    )
    for error, outbox_ids in failed_by_error.items():
        OutboxEvent.objects.filter(id__in=outbox_ids, published_at__isnull=True).update(
            attempts=F("attempts") + 1,
            last_attempt_at=now,
            last_error=error[:2000],
            claimed_until=Value(now) + backoff,
        )


def publish_after_commit(outbox_id: int, envelope: dict) -> None:
    """Fast path, run by ``transaction.on_commit``: never raises, bounded by the publish timeout.

    After a failure the broker is skipped for EVENTS_PUBLISH_COOLDOWN seconds, so that while
    RabbitMQ is down each order costs no broker wait at all; the relay publishes those rows.
    """
    global _cooldown_until
    if time.monotonic() < _cooldown_until:
        OutboxEvent.objects.filter(id=outbox_id, published_at__isnull=True).update(claimed_until=None)
        return
    try:
        [result] = publish_rows([(outbox_id, envelope)], thread_publisher())
    except Exception:  # recording the outcome failed; the relay still owns the row once the claim lapses
        logger.exception("outbox %s: could not record the publish outcome", outbox_id)
        return
    if not result.ok:
        _cooldown_until = time.monotonic() + settings.EVENTS_PUBLISH_COOLDOWN
        OutboxEvent.objects.filter(id=outbox_id, published_at__isnull=True).update(claimed_until=None)


def claim_batch(limit: int) -> list[tuple[int, dict]]:
    """Claim up to ``limit`` publishable rows, oldest first; the claim commits before any publish."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            OutboxEvent.objects.select_for_update(skip_locked=True)
            .filter(published_at__isnull=True)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("id")
            .values_list("id", "envelope")[:limit]
        )
        if rows:
            OutboxEvent.objects.filter(id__in=[row_id for row_id, _ in rows]).update(
                claimed_until=now + timedelta(seconds=settings.OUTBOX_CLAIM_SECONDS)
            )
    return rows


def relay_once(publisher: BrokerPublisher, batch_size: int | None = None) -> list[PublishResult]:
    rows = claim_batch(batch_size or settings.OUTBOX_BATCH_SIZE)
    deadline = time.monotonic() + settings.OUTBOX_CLAIM_SECONDS / 2
    return publish_rows(rows, publisher, deadline=deadline) if rows else []


def outbox_lag_seconds() -> float:
    """Age of the oldest pending row, 0 when nothing is pending."""
    oldest = (
        OutboxEvent.objects.filter(published_at__isnull=True)
        .order_by("id")
        .values_list("created_at", flat=True)
        .first()
    )
    return 0.0 if oldest is None else (timezone.now() - oldest).total_seconds()
