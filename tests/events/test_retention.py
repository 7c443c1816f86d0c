"""Retention (manage.py prune_events): what goes, what stays, in batches, and how beat schedules it."""

from __future__ import annotations

import io
import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone
from kombu import Producer

from marketplace.celery import MAINTENANCE_QUEUE
from marketplace.celery import app as celery_app
from marketplace.events import headers as message_headers
from marketplace.events import retention, topology
from marketplace.events.models import (
    DeliveryAttempt,
    FailedEvent,
    FailedEventReplay,
    OutboxEvent,
    ProcessedEvent,
)
from tests.events.conftest import order_placed_sample
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
NOW = timezone.now()
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def _retention(settings):
    settings.OUTBOX_RETENTION_DAYS = 30
    settings.PROCESSED_EVENT_RETENTION_DAYS = 30
    settings.FAILED_EVENT_RETENTION_DAYS = 90


# Rows are made oldest first, as they are written: ids grow with time, and pruning stops at the
# first row still within retention (a row older than a newer id is left for a later run).


def outbox_event(*, age: timedelta, published_age: timedelta | None) -> OutboxEvent:
    envelope = order_placed_sample()
    row = OutboxEvent.objects.create(event_id=envelope["id"], event_type=envelope["type"], envelope=envelope)
    published_at = None if published_age is None else NOW - published_age
    OutboxEvent.objects.filter(pk=row.pk).update(created_at=NOW - age, published_at=published_at)
    return row


def marker(*, age: timedelta, subscriber: str = "order_confirmation", event_id=None) -> ProcessedEvent:
    row = ProcessedEvent.objects.create(subscriber=subscriber, event_id=event_id or uuid.uuid4())
    ProcessedEvent.objects.filter(pk=row.pk).update(processed_at=NOW - age)
    return row


def failed_event(*, status: str, age: timedelta, in_queue: bool = False, **fields) -> FailedEvent:
    event_id = fields.pop("event_id", None) or uuid.uuid4()
    return FailedEvent.objects.create(
        subscriber=fields.pop("subscriber", "order_confirmation"),
        event_id=event_id,
        payload={"id": str(event_id), "type": "order.placed"},
        status=status,
        in_dead_letter_queue=in_queue,
        exception_class="builtins.RuntimeError",
        first_failed_at=NOW - age,
        last_failed_at=NOW - age,
        resolved_at=NOW - age if status == FailedEvent.Status.RESOLVED else None,
        **fields,
    )


def audit(failed: FailedEvent, *, age: timedelta) -> FailedEventReplay:
    replay = FailedEventReplay.objects.create(failed_event=failed, via="command")
    FailedEventReplay.objects.filter(pk=replay.pk).update(requested_at=NOW - age, finished_at=NOW - age)
    return replay


def remaining(model, rows) -> set[int]:
    return set(model.objects.filter(pk__in=[row.pk for row in rows]).values_list("pk", flat=True))


def prune(**options) -> retention.PruneResult:
    return retention.prune_events(now=NOW, compact=False, **options)


# --- what goes, what stays ----------------------------------------------------------------------


def test_published_outbox_rows_past_retention_go_and_pending_rows_stay_whatever_their_age(db):
    pending = outbox_event(age=400 * DAY, published_age=None)
    old = outbox_event(age=31 * DAY, published_age=31 * DAY)
    published_late = outbox_event(age=31 * DAY, published_age=2 * DAY)
    recent = outbox_event(age=29 * DAY, published_age=29 * DAY)

    result = prune()

    assert remaining(OutboxEvent, [old, recent, pending, published_late]) == {recent.pk, pending.pk, published_late.pk}
    assert result.tables[0].table == retention.OUTBOX
    assert result.tables[0].deleted == 1


def test_markers_past_retention_go_unless_their_event_has_an_open_failure(db):
    replay_pending, still_failed, resolved = marker(age=60 * DAY), marker(age=60 * DAY), marker(age=60 * DAY)
    failed_event(status=FailedEvent.Status.REPLAYING, age=60 * DAY, event_id=replay_pending.event_id)
    failed_event(status=FailedEvent.Status.FAILED, age=60 * DAY, event_id=still_failed.event_id)
    failed_event(status=FailedEvent.Status.RESOLVED, age=1 * DAY, event_id=resolved.event_id)
    # The same event failed at another subscriber: no reason to keep this subscriber's marker.
    other_subscriber = marker(age=60 * DAY)
    failed_event(
        status=FailedEvent.Status.FAILED, age=60 * DAY, event_id=other_subscriber.event_id, subscriber="seller"
    )
    old = marker(age=31 * DAY)
    recent = marker(age=29 * DAY)

    prune()

    assert remaining(ProcessedEvent, [old, recent, replay_pending, still_failed, resolved, other_subscriber]) == {
        recent.pk,
        replay_pending.pk,
        still_failed.pk,
    }


def test_closed_failures_past_retention_go_with_their_audit_rows_and_open_ones_stay(db):
    resolved = failed_event(status=FailedEvent.Status.RESOLVED, age=91 * DAY)
    archived = failed_event(status=FailedEvent.Status.ARCHIVED, age=91 * DAY)
    replays = [audit(resolved, age=92 * DAY), audit(archived, age=91 * DAY)]
    attempt = DeliveryAttempt.objects.create(
        subscriber="order_confirmation",
        event_id=resolved.event_id,
        attempt=2,
        started_at=NOW - 10 * DAY,
        duration_ms=1.0,
        outcome=DeliveryAttempt.Outcome.SUCCEEDED,
        replay_of=resolved,
    )
    kept = [
        failed_event(status=FailedEvent.Status.FAILED, age=400 * DAY),
        failed_event(status=FailedEvent.Status.REPLAYING, age=400 * DAY),
        failed_event(status=FailedEvent.Status.RESOLVED, age=89 * DAY),
        # Still in its dead-letter queue: compaction must find its record to remove the message.
        failed_event(status=FailedEvent.Status.ARCHIVED, age=400 * DAY, in_queue=True),
    ]
    archived_yesterday = failed_event(status=FailedEvent.Status.ARCHIVED, age=400 * DAY)
    audit(archived_yesterday, age=1 * DAY)
    kept.append(archived_yesterday)

    result = prune()

    assert remaining(FailedEvent, [resolved, archived, *kept]) == {row.pk for row in kept}
    assert not remaining(FailedEventReplay, replays)
    assert result.tables[2].deleted == 2
    assert result.tables[2].cascaded == {FailedEventReplay._meta.label: 2}
    attempt.refresh_from_db()
    assert attempt.replay_of_id is None


def attempt(*, age: timedelta, event_id=None) -> DeliveryAttempt:
    return DeliveryAttempt.objects.create(
        subscriber="order_confirmation",
        event_id=event_id or uuid.uuid4(),
        attempt=1,
        started_at=NOW - age,
        duration_ms=1.0,
        outcome=DeliveryAttempt.Outcome.RETRYING,
    )


def test_delivery_history_goes_with_the_failures_it_explains_not_while_one_is_open(db):
    old, recent = attempt(age=91 * DAY), attempt(age=89 * DAY)
    still_failing = failed_event(status=FailedEvent.Status.FAILED, age=200 * DAY)
    of_open_failure = attempt(age=200 * DAY, event_id=still_failing.event_id)

    result = prune()

    assert remaining(DeliveryAttempt, [old, recent, of_open_failure]) == {recent.pk, of_open_failure.pk}
    assert [t.deleted for t in result.tables if t.table == retention.ATTEMPTS] == [1]


# --- batches, dry run, concurrency -----------------------------------------------------------


def test_deletes_in_batches_of_the_given_size(db):
    old = [outbox_event(age=40 * DAY, published_age=40 * DAY) for _ in range(25)]
    recent = outbox_event(age=1 * DAY, published_age=1 * DAY)
    seen: list[tuple[str, int]] = []

    result = prune(batch_size=10, progress=lambda table, deleted: seen.append((table, deleted)))

    assert not remaining(OutboxEvent, old)
    assert remaining(OutboxEvent, [recent]) == {recent.pk}
    assert seen == [(retention.OUTBOX, 10), (retention.OUTBOX, 20), (retention.OUTBOX, 25)]
    assert (result.tables[0].deleted, result.tables[0].batches) == (25, 3)


def test_dry_run_counts_and_deletes_nothing(db):
    outboxed = [outbox_event(age=40 * DAY, published_age=40 * DAY) for _ in range(3)]
    markers = [marker(age=40 * DAY) for _ in range(2)]
    failed = failed_event(status=FailedEvent.Status.RESOLVED, age=100 * DAY)

    result = prune(dry_run=True)

    assert [(table.table, table.deleted) for table in result.tables] == [
        (retention.OUTBOX, 3),
        (retention.PROCESSED, 2),
        (retention.FAILED, 1),
        (retention.ATTEMPTS, 0),
    ]
    assert len(remaining(OutboxEvent, outboxed)) == 3
    assert len(remaining(ProcessedEvent, markers)) == 2
    assert remaining(FailedEvent, [failed]) == {failed.pk}


def test_a_row_another_transaction_holds_is_skipped_not_waited_for(transactional_db):
    held, *others = [marker(age=40 * DAY) for _ in range(3)]
    locked, release = threading.Event(), threading.Event()

    def hold_row():
        with transaction.atomic():
            ProcessedEvent.objects.select_for_update().get(pk=held.pk)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_row)
    holder.start()
    try:
        assert locked.wait(10)
        with connection.cursor() as cursor:  # fail rather than hang if prune waited for the lock
            cursor.execute("SET statement_timeout = '5s'")
        prune(batch_size=2)
        assert remaining(ProcessedEvent, [held, *others]) == {held.pk}
    finally:
        release.set()
        holder.join()
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
    prune()
    assert not remaining(ProcessedEvent, [held])


# --- settings ---------------------------------------------------------------------------------


def test_refuses_markers_kept_shorter_than_the_outbox(db, settings):
    settings.OUTBOX_RETENTION_DAYS = 60
    old = marker(age=40 * DAY)

    with pytest.raises(CommandError, match="PROCESSED_EVENT_RETENTION_DAYS"):
        call_command("prune_events", stdout=io.StringIO())
    assert remaining(ProcessedEvent, [old]) == {old.pk}


def test_refuses_markers_kept_no_longer_than_a_retry_chain(db, settings):
    settings.OUTBOX_RETENTION_DAYS = settings.PROCESSED_EVENT_RETENTION_DAYS = 1
    settings.SUBSCRIBER_INFRA_RETRY_MAX_SECONDS = 2 * 24 * 3600

    with pytest.raises(retention.RetentionMisconfigured, match="retry chain"):
        prune()


# --- the command, with the dead-letter queues -------------------------------------------------


def test_command_compacts_the_dead_letter_queues_first_so_closed_failures_in_them_go_too(db, broker, purge_queues):
    subscriber = topology.subscriber_named("order_confirmation")
    envelope = order_placed_sample()
    Producer(broker.default_channel).publish(
        json.dumps(envelope).encode(),
        exchange="",
        routing_key=subscriber.dead_letter_queue_name,
        content_type="application/json",
        content_encoding="utf-8",
        serializer=None,
        headers={message_headers.DEAD_LETTER_ID: str(uuid.uuid4())},
    )
    queued = failed_event(status=FailedEvent.Status.RESOLVED, age=100 * DAY, in_queue=True, event_id=envelope["id"])
    audit(queued, age=100 * DAY)
    old = outbox_event(age=40 * DAY, published_age=40 * DAY)
    out = io.StringIO()

    call_command("prune_events", "--dry-run", stdout=out)
    assert "dead-letter queues: not compacted (dry run)" in out.getvalue()
    assert f"{retention.OUTBOX}: would delete 1" in out.getvalue()
    assert f"{retention.FAILED}: would delete 0" in out.getvalue()
    assert remaining(FailedEvent, [queued])
    assert remaining(OutboxEvent, [old])

    out = io.StringIO()
    call_command("prune_events", "--batch-size", "5", stdout=out)

    assert "dead-letter queues: removed 1 message(s) of closed failures" in out.getvalue()
    assert f"{retention.OUTBOX}: deleted 1 in 1 batch(es)" in out.getvalue()
    assert f"{retention.FAILED}: deleted 1 in 1 batch(es)" in out.getvalue()
    assert "with 1 failed event replays" in out.getvalue()
    assert not remaining(FailedEvent, [queued])
    assert not remaining(OutboxEvent, [old])
    _, depth, _ = broker.default_channel.queue_declare(subscriber.dead_letter_queue_name, passive=True)
    assert depth == 0


# --- scheduling -----------------------------------------------------------------------------------


def test_beat_schedules_the_task_onto_the_maintenance_queue_that_a_procfile_worker_consumes(settings):
    from celery.schedules import crontab

    entry = celery_app.conf.beat_schedule["prune-events"]
    assert entry["task"] == "events.prune_events"
    # Else beat adds celery.backend_cleanup, routed to a queue no worker consumes.
    assert not celery_app.conf.result_expires
    assert entry["schedule"] == crontab.from_string(settings.RETENTION_SCHEDULE)
    celery_app.loader.import_default_modules()
    assert "events.prune_events" in celery_app.tasks

    route = celery_app.amqp.router.route(dict(entry.get("options", {})), entry["task"])
    assert route["queue"].name == MAINTENANCE_QUEUE.name
    assert celery_app.amqp.queues[MAINTENANCE_QUEUE.name].queue_arguments == {"x-queue-type": topology.QUEUE_TYPE}

    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    assert "celery -A marketplace beat" in procfile["beat"]
    assert "--schedule /tmp/" in procfile["beat"]
    assert any(f"worker -Q {MAINTENANCE_QUEUE.name} " in command for command in procfile.values())
    compose = (ROOT / "docker-compose.yml").read_text()
    assert '"beat"' in compose
    assert f'"{MAINTENANCE_QUEUE.name}"' in compose


def test_what_beat_sends_lands_in_the_maintenance_queue(broker):
    entry = celery_app.conf.beat_schedule["prune-events"]
    try:
        with celery_app.producer_or_acquire() as producer:
            celery_app.send_task(entry["task"], producer=producer, **entry.get("options", {}))
        # The publish is not confirmed: the quorum queue counts the message a moment later.
        eventually(
            lambda: broker.default_channel.queue_declare(MAINTENANCE_QUEUE.name, passive=True).message_count == 1,
            timeout=10,
            message="the task in the maintenance queue",
        )
    finally:
        broker.default_channel.queue_delete(MAINTENANCE_QUEUE.name)


def test_the_task_prunes(db):
    from marketplace.events.tasks import prune_events

    old = outbox_event(age=40 * DAY, published_age=40 * DAY)
    prune_events.run()
    assert not remaining(OutboxEvent, [old])
