"""backfill_events republishes retained outbox events to one subscriber's queue, and to no other."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from kombu import Connection, Queue

from marketplace.events import topology
from marketplace.events.backfill import BACKFILL_HEADER
from marketplace.events.broker import BrokerPublisher
from marketplace.events.models import OutboxEvent
from tests.support.broker import queue_depth

pytestmark = [pytest.mark.broker]

SELLER = topology.subscriber_named("seller_notification")


def drain(url: str, queue_name: str) -> list:
    messages = []
    with Connection(url) as broker:
        queue = Queue(queue_name, no_declare=True)(broker.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            messages.append(message)
    return messages


def aged(rows: list[OutboxEvent], *, hours: float) -> None:
    OutboxEvent.objects.filter(id__in=[row.id for row in rows]).update(
        created_at=timezone.now() - timedelta(hours=hours)
    )


def test_backfill_reaches_only_the_named_subscriber_in_id_order(
    db, broker, broker_url, purge_queues, event_tap, pending_events
):
    too_old = pending_events(2)
    aged(too_old, hours=5)
    wanted = pending_events(5)
    aged(wanted, hours=1)
    out = StringIO()

    call_command(
        "backfill_events",
        "--subscriber",
        SELLER.name,
        "--since",
        (timezone.now() - timedelta(hours=2)).isoformat(),
        "--batch-size",
        "2",
        stdout=out,
    )

    lines = out.getvalue().splitlines()
    assert lines[:3] == ["2/5 (40%)", "4/5 (80%)", "5/5 (100%)"]
    assert (
        lines[3] == f"republished 5 of 5 event(s) to {SELLER.queue_name} (outbox ids {wanted[0].id}..{wanted[-1].id})"
    )
    messages = drain(broker_url, SELLER.queue_name)
    assert [m.properties["message_id"] for m in messages] == [str(row.event_id) for row in wanted]
    for message, row in zip(messages, wanted, strict=True):
        assert json.loads(message.body) == row.envelope
        assert message.content_type == "application/json"
        assert message.properties["delivery_mode"] == 2
        assert message.properties["type"] == "order.placed"
        assert message.headers["event_type"] == "order.placed"
        assert message.headers["event_version"] == 1
        assert message.headers[BACKFILL_HEADER] is True
        assert message.delivery_info["exchange"] == ""
    assert event_tap.drain() == [], "nothing went through the fanout"
    for subscriber in topology.SUBSCRIBERS:
        for name in (subscriber.queue_name, subscriber.dead_letter_queue_name):
            assert queue_depth(broker, name) == 0, f"{name} saw the backfill"


def test_backfill_honours_until_and_type_and_dry_run_publishes_nothing(
    db, broker, broker_url, purge_queues, pending_events
):
    early, late = pending_events(2)
    aged([early], hours=3)
    aged([late], hours=1)
    since = (timezone.now() - timedelta(hours=4)).isoformat()
    until = (timezone.now() - timedelta(hours=2)).isoformat()

    dry = StringIO()
    call_command("backfill_events", "--subscriber", SELLER.name, "--since", since, "--dry-run", stdout=dry)
    assert f"would republish 2 event(s) to {SELLER.queue_name}" in dry.getvalue()
    assert queue_depth(broker, SELLER.queue_name) == 0

    other_type = StringIO()
    call_command(
        "backfill_events", "--subscriber", SELLER.name, "--since", since, "--type", "order.cancelled", stdout=other_type
    )
    assert "republished 0 of 0 event(s)" in other_type.getvalue()

    call_command(
        "backfill_events",
        "--subscriber",
        SELLER.name,
        "--since",
        since,
        "--until",
        until,
        "--type",
        "order.placed",
        stdout=StringIO(),
    )
    assert [m.properties["message_id"] for m in drain(broker_url, SELLER.queue_name)] == [str(early.event_id)]


def test_a_backfilled_message_is_the_published_one_plus_the_backfill_header(
    db, broker_url, purge_queues, event_tap, pending_events
):
    [row] = pending_events(1)
    row.refresh_from_db()  # the envelope as the relay reads it back (jsonb orders the keys its own way)
    with closing(BrokerPublisher()) as publisher:
        publisher.publish(row.envelope)
    [published] = event_tap.drain(expected=1)
    drain(broker_url, SELLER.queue_name)

    call_command("backfill_events", "--subscriber", SELLER.name, "--since", "2000-01-01", stdout=StringIO())

    [backfilled] = drain(broker_url, SELLER.queue_name)
    assert backfilled.body == published.body
    ignore = {"timestamp", "application_headers", "headers"}
    assert {k: v for k, v in backfilled.properties.items() if k not in ignore} == {
        k: v for k, v in published.properties.items() if k not in ignore
    }
    quorum_queue_header = "x-delivery-count"  # added by the subscriber's quorum queue, not by a publisher
    assert {k: v for k, v in backfilled.headers.items() if k != quorum_queue_header} == {
        **published.headers,
        BACKFILL_HEADER: True,
    }


def test_backfill_to_a_queue_that_does_not_exist_fails_before_publishing(db, throwaway_vhost, settings, pending_events):
    pending_events(1)
    settings.BROKER_URL = throwaway_vhost.url  # an empty vhost: no topology declared

    with pytest.raises(CommandError, match=r"queue marketplace\.seller_notification does not exist.*setup_broker"):
        call_command("backfill_events", "--subscriber", SELLER.name, "--since", "2000-01-01", stdout=StringIO())


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--since", "yesterday-ish"], "not a date or an ISO date-time"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "--until must be later than --since"),
        (["--since", "2026-01-02", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_backfill_refuses_bad_arguments(db, arguments, error):
    with pytest.raises(CommandError, match=error):
        call_command("backfill_events", "--subscriber", SELLER.name, *arguments, stdout=StringIO())
