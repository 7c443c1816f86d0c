"""The transactional outbox: events are written in the transaction that makes the change, then
published by this process's on-commit publisher thread, or by the relay (``manage.py
relay_outbox``) whatever that thread could not publish.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DurationField, ExpressionWrapper, F, Q, Value
from django.db.models.functions import Least, Power
from django.utils import timezone

from marketplace import metrics
from marketplace.events.broker import BrokerPublisher, Unroutable
from marketplace.events.models import OutboxEvent

logger = logging.getLogger(__name__)


def enqueue_event(envelope: dict[str, Any]) -> OutboxEvent:
    """Store ``envelope`` in the outbox as part of the current transaction, publish it on commit.

    The row is born claimed by this process's on-commit publisher, so the relay leaves it alone
    unless that publisher has not confirmed it within OUTBOX_CLAIM_SECONDS (e.g. it crashed).
    A rolled-back transaction leaves neither a row nor a publish.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("enqueue_event must run inside the transaction that makes the change")
    row = OutboxEvent.objects.create(
        event_id=envelope["id"],
        event_type=envelope["type"],
        envelope=envelope,
        claimed_until=timezone.now() + timedelta(seconds=settings.OUTBOX_CLAIM_SECONDS),
    )
    # robust: the order is committed by now; a failure here must never turn its 201 into a 500.
    transaction.on_commit(lambda: publish_after_commit(row.pk, envelope), robust=True)
    return row


@dataclass
class PublishResult:
    outbox_id: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def publish_rows(
    rows: list[tuple[int, dict[str, Any]]], publisher: BrokerPublisher, *, deadline: float | None = None
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
            metrics.observe_publish_latency(envelope)  # never raises
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


class OnCommitPublisher:
    """This process's fast path: a thread that publishes committed outbox rows, in batches.

    The transaction that wrote a row hands it over on commit and returns at once, so no request
    waits for the broker, however slow or blocked it is. The thread publishes each row with a
    confirm and marks the whole batch published in one UPDATE. After a broker failure, or while
    RabbitMQ blocks publishers (a memory or disk alarm), it skips the broker for
    EVENTS_PUBLISH_COOLDOWN seconds and releases its rows to the relay. Rows it never reached
    (the process died) stay claimed until OUTBOX_CLAIM_SECONDS, then the relay publishes them.
    """

    IDLE_SECONDS = 5.0  # an idle thread gives its database connection back after this long

    def __init__(self, batch_size: int = 100):
        self.batch_size = batch_size
        self._lock = threading.Condition()
        self._reset()

    def _reset(self) -> None:
        self._rows: queue.SimpleQueue[tuple[int, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._submitted = self._handled = 0
        self.cooldown_until = 0.0

    def submit(self, outbox_id: int, envelope: dict[str, Any]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread did not come along
                self._reset()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="on-commit-publisher", daemon=True)
                self._thread.start()
            self._submitted += 1
        self._rows.put((outbox_id, envelope))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far has been published or released; False on timeout."""
        with self._lock:
            target = self._submitted
            return self._lock.wait_for(lambda: self._handled >= target, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what was submitted, then end the thread (tests, and interpreter exit)."""
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._rows.put(None)
            thread.join(timeout)
        self._reset()

    def _run(self) -> None:
        broker = BrokerPublisher()
        try:
            while True:
                try:
                    first = self._rows.get(timeout=self.IDLE_SECONDS)
                except queue.Empty:
                    connection.close()
                    continue
                batch = [first]
                while len(batch) < self.batch_size and batch[-1] is not None:
                    try:
                        batch.append(self._rows.get_nowait())
                    except queue.Empty:
                        break
                rows = [row for row in batch if row is not None]
                try:
                    self._publish(rows, broker)
                except Exception:  # e.g. the database is down: the claims lapse and the relay takes over
                    logger.exception("could not publish or record %d outbox row(s); the relay will", len(rows))
                finally:
                    with self._lock:
                        self._handled += len(rows)
                        self._lock.notify_all()
                if batch[-1] is None:
                    return
        finally:
            broker.close()
            connection.close()

    def _publish(self, rows: list[tuple[int, dict[str, Any]]], broker: BrokerPublisher) -> None:
        connection.close_if_unusable_or_obsolete()
        if time.monotonic() < self.cooldown_until or broker.is_blocked():
            _release([outbox_id for outbox_id, _ in rows])
            return
        results = publish_rows(rows, broker)
        failed = [result.outbox_id for result in results if not result.ok]
        if failed:
            self.cooldown_until = time.monotonic() + settings.EVENTS_PUBLISH_COOLDOWN
            _release(failed)


def _release(outbox_ids: list[int]) -> None:
    """Hand rows to the relay now rather than when their claim lapses."""
    OutboxEvent.objects.filter(id__in=outbox_ids, published_at__isnull=True).update(claimed_until=None)


on_commit_publisher = OnCommitPublisher()
atexit.register(on_commit_publisher.stop)


def publish_after_commit(outbox_id: int, envelope: dict[str, Any]) -> None:
    """Run by ``transaction.on_commit``: hand the row to this process's publisher thread."""
    on_commit_publisher.submit(outbox_id, envelope)


def claim_batch(limit: int) -> list[tuple[int, dict[str, Any]]]:
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
