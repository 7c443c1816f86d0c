"""Retention: how long the event bus keeps what it writes (``manage.py prune_events``, run daily by
Celery beat through ``events.prune_events``).

Three tables grow with every event or failure; each is pruned past a horizon of its own:

- **OutboxEvent**: rows created *and* published more than ``OUTBOX_RETENTION_DAYS`` ago. A pending
  row is never deleted, whatever its age: it is an event not delivered yet. ``backfill_events``
  republishes retained rows only, so this horizon is also how far back a backfill can reach.
- **ProcessedEvent**: dedupe markers written more than ``PROCESSED_EVENT_RETENTION_DAYS`` ago, except
  the marker of an event that has an open failure (failed or replaying) at the same subscriber,
  which a replay may still redeliver whatever its age. A marker must outlive every redelivery of
  its event, or the redelivery runs its effect again: so the horizon must exceed the longest retry
  chain, and since a backfill can redeliver any retained outbox row, it must be at least the
  outbox's (both checked by ``horizons``).
- **FailedEvent**: resolved and archived failures whose last failure, resolution and last replay or
  archive request are all older than ``FAILED_EVENT_RETENTION_DAYS``, once their message has left
  the dead-letter queue. A record whose message is still there is kept: compaction finds a message's
  record to decide that it may go, and would keep the message of a deleted record forever. Their
  ``FailedEventReplay`` audit rows go with them (the foreign key cascades); the ORM's delete also
  clears ``DeliveryAttempt.replay_of``, which has no database constraint. Open failures are never
  deleted.

Rows go in batches, each its own short transaction: the next ids are selected ``FOR UPDATE SKIP
LOCKED`` (a row another transaction holds is skipped, never waited for, and left for the next run)
and deleted, then the transaction commits. Batches walk the primary key upwards from the previous
batch (keyset), and stop before the first row still within retention, so no batch rescans rows
already deleted and the last one does not scan the table's recent rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from kombu import Connection

from marketplace.events import dead_letters, topology
from marketplace.events.models import DeliveryAttempt, FailedEvent, FailedEventReplay, OutboxEvent, ProcessedEvent

logger = logging.getLogger(__name__)


OUTBOX = "outbox events"
PROCESSED = "processed-event markers"
FAILED = "failed events"
ATTEMPTS = "delivery attempts"


class RetentionMisconfigured(ValueError):
    """Retention settings that would delete what must be kept."""


@dataclass(frozen=True)
class Horizons:
    """Rows older than these moments may go."""

    outbox: datetime
    processed: datetime
    failed: datetime


@dataclass(frozen=True)
class TableResult:
    table: str
    cutoff: datetime
    # Rows deleted, or that would be deleted (dry run).
    deleted: int
    batches: int
    # Rows of other models deleted with them (a failed event's replay audit rows), by model label.
    cascaded: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PruneResult:
    tables: list[TableResult]
    dry_run: bool
    # Messages of closed failures removed from the dead-letter queues; None when compaction did
    # not run (dry run, or the broker was unreachable).
    compacted: int | None


def longest_retry_chain() -> timedelta:
    """The longest a subscriber can keep retrying one delivery: every backoff of the slowest retry
    policy plus the whole wait for our own database (SUBSCRIBER_INFRA_RETRY_MAX_SECONDS)."""
    slowest = max(
        (
            sum(topology.retry_delay(attempt, **policy) for attempt in range(policy["max_retries"]))
            for policy in settings.SUBSCRIBER_RETRY.values()
        ),
        default=0,
    )
    return timedelta(seconds=slowest + settings.SUBSCRIBER_INFRA_RETRY_MAX_SECONDS)


def horizons(*, now: datetime) -> Horizons:
    """The cutoffs the settings give at ``now``; refuses settings that would prune too early."""
    days = {
        "OUTBOX_RETENTION_DAYS": settings.OUTBOX_RETENTION_DAYS,
        "PROCESSED_EVENT_RETENTION_DAYS": settings.PROCESSED_EVENT_RETENTION_DAYS,
        "FAILED_EVENT_RETENTION_DAYS": settings.FAILED_EVENT_RETENTION_DAYS,
    }
    for name, value in days.items():
        if value < 1:
            raise RetentionMisconfigured(f"{name} must be at least 1 (day), not {value}")
    outbox_days, processed_days, failed_days = days.values()
    if processed_days < outbox_days:
        raise RetentionMisconfigured(
            f"PROCESSED_EVENT_RETENTION_DAYS ({processed_days}) must be at least OUTBOX_RETENTION_DAYS "
            f"({outbox_days}): backfill_events can republish any retained outbox event, and a subscriber "
            "whose marker is gone would run its effect again"
        )
    chain = longest_retry_chain()
    if timedelta(days=processed_days) <= chain:
        raise RetentionMisconfigured(
            f"PROCESSED_EVENT_RETENTION_DAYS ({processed_days}) must be longer than the longest retry chain "
            f"({chain}): a retry arriving after its marker is gone would run its effect again"
        )
    return Horizons(
        outbox=now - timedelta(days=outbox_days),
        processed=now - timedelta(days=processed_days),
        failed=now - timedelta(days=failed_days),
    )


# --- what may go ------------------------------------------------------------------------------


def prunable_outbox_events(*, before: datetime) -> models.QuerySet[OutboxEvent]:
    """Published rows created and published before ``before``; never a pending row."""
    return OutboxEvent.objects.filter(created_at__lt=before, published_at__isnull=False, published_at__lt=before)


def prunable_processed_events(*, before: datetime) -> models.QuerySet[ProcessedEvent]:
    """Markers written before ``before``, but none whose event has an open failure at its subscriber."""
    open_failure = FailedEvent.objects.filter(
        subscriber=OuterRef("subscriber"), event_id=OuterRef("event_id"), status__in=FailedEvent.OPEN
    )
    return ProcessedEvent.objects.filter(processed_at__lt=before).filter(~Exists(open_failure))


def prunable_failed_events(*, before: datetime) -> models.QuerySet[FailedEvent]:
    """Resolved or archived failures out of the dead-letter queue, untouched since ``before``."""
    recent_request = FailedEventReplay.objects.filter(failed_event=OuterRef("pk")).filter(
        Q(requested_at__gte=before) | Q(finished_at__gte=before)
    )
    return (
        FailedEvent.objects.filter(status__in=FailedEvent.CLOSED, in_dead_letter_queue=False, last_failed_at__lt=before)
        .filter(Q(resolved_at__isnull=True) | Q(resolved_at__lt=before))
        .filter(~Exists(recent_request))
    )


def prunable_delivery_attempts(*, before: datetime) -> models.QuerySet[DeliveryAttempt]:
    """Attempts made before ``before`` (the failed events' horizon: the history lives as long as
    the failures it explains), but none of an event with an open failure at its subscriber."""
    open_failure = FailedEvent.objects.filter(
        subscriber=OuterRef("subscriber"), event_id=OuterRef("event_id"), status__in=FailedEvent.OPEN
    )
    return DeliveryAttempt.objects.filter(started_at__lt=before).filter(~Exists(open_failure))


# --- pruning ----------------------------------------------------------------------------------


def prune_events(
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    dry_run: bool = False,
    compact: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> PruneResult:
    """Delete what is past retention in every table, ``batch_size`` rows per transaction.

    First (unless ``compact`` is false or this is a dry run) removes closed failures' messages from
    the dead-letter queues, as the recorder does every few seconds, so that their records can go in
    this run. ``progress(table, deleted_so_far)`` is called after every batch. With ``dry_run``
    nothing changes: the rows that would be deleted are counted. Safe to run while the system runs,
    and concurrently with itself; not inside a transaction (each batch must commit on its own).
    """
    batch_size = settings.RETENTION_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoffs = horizons(now=now or timezone.now())
    compacted = compact_dead_letter_queues() if compact and not dry_run else None

    def run(
        table: str, candidates: models.QuerySet[Any], cutoff: datetime, *, newer: models.QuerySet[Any] | None = None
    ) -> TableResult:
        below = _first_id(newer)
        return _prune(
            table, candidates, cutoff=cutoff, below=below, batch_size=batch_size, dry_run=dry_run, progress=progress
        )

    tables = [
        run(
            OUTBOX,
            prunable_outbox_events(before=cutoffs.outbox),
            cutoffs.outbox,
            # created_at is indexed: the earliest row still within retention is one index probe away.
            newer=OutboxEvent.objects.filter(created_at__gte=cutoffs.outbox).order_by("created_at"),
        ),
        run(
            PROCESSED,
            prunable_processed_events(before=cutoffs.processed),
            cutoffs.processed,
            # processed_at is not indexed: walk the primary key, over the rows about to be deleted.
            newer=ProcessedEvent.objects.filter(processed_at__gte=cutoffs.processed).order_by("id"),
        ),
        # Few rows (failures only): no bound needed.
        run(FAILED, prunable_failed_events(before=cutoffs.failed), cutoffs.failed),
        run(ATTEMPTS, prunable_delivery_attempts(before=cutoffs.failed), cutoffs.failed),
    ]
    return PruneResult(tables=tables, dry_run=dry_run, compacted=compacted)


def _first_id(newer: models.QuerySet[Any] | None) -> int | None:
    """An id below which (nearly) every row is older than the cutoff: ids grow with time.

    Rows above it that are old anyway (committed out of order) are simply left for the next run.
    """
    return None if newer is None else newer.values_list("id", flat=True).first()


def _prune(
    table: str,
    candidates: models.QuerySet[Any],
    *,
    cutoff: datetime,
    below: int | None,
    batch_size: int,
    dry_run: bool,
    progress: Callable[[str, int], None] | None,
) -> TableResult:
    model = candidates.model
    candidates = candidates.order_by()
    if below is not None:
        candidates = candidates.filter(id__lt=below)
    if dry_run:
        return TableResult(table, cutoff, candidates.count(), 0)
    deleted = batches = 0
    cascaded: dict[str, int] = {}
    after = 0
    while True:
        with transaction.atomic():
            ids = list(
                candidates.filter(id__gt=after)
                .order_by("id")
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:batch_size]
            )
            if not ids:
                break
            # The ORM's delete follows each relation's on_delete (a failed event's replay audit
            # rows); a model nothing points at is deleted in one DELETE ... WHERE id IN (...).
            _, per_model = model.objects.filter(id__in=ids).delete()
        batches += 1
        after = ids[-1]
        deleted += per_model.pop(model._meta.label, 0)
        for label, count in per_model.items():
            cascaded[label] = cascaded.get(label, 0) + count
        if progress:
            progress(table, deleted)
        if len(ids) < batch_size:
            break
    if deleted:
        logger.info("pruned %d %s older than %s in %d batch(es)", deleted, table, cutoff.isoformat(), batches)
    return TableResult(table, cutoff, deleted, batches, cascaded)


def compact_dead_letter_queues(*, broker_url: str | None = None) -> int | None:
    """Remove closed failures' messages from every dead-letter queue now (dead_letters.compact,
    which the recorder runs every DEAD_LETTER_COMPACT_SECONDS); None if the broker is unreachable.

    Pruning stays correct without it: a failure whose message is still queued is simply kept.
    """
    removed = 0
    try:
        with Connection(broker_url or settings.BROKER_URL, transport_options={"confirm_publish": True}) as connection:
            connection.ensure_connection(max_retries=3)
            for subscriber in topology.SUBSCRIBERS:
                try:
                    removed += dead_letters.compact(connection, subscriber)
                except connection.channel_errors as exc:  # e.g. its .dead queue is missing
                    logger.warning("could not compact %s: %s", subscriber.dead_letter_queue_name, exc)
    except Exception as exc:  # the broker: this run prunes what is already out of the queues
        logger.warning(
            "could not compact the dead-letter queues (%s: %s); closed failures still queued are kept until a "
            "later run",
            type(exc).__name__,
            exc,
        )
        return None
    return removed
