"""The relay: publishes what the on-commit path could not, at least once, and side by side with other relays."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import closing
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection as db_connection
from django.utils import timezone
from kombu import Connection

from marketplace.events import topology
from marketplace.events.broker import BrokerPublisher, Unroutable
from marketplace.events.models import OutboxEvent
from marketplace.events.outbox import relay_once
from orders.services import LineRequest, order_place
from tests.factories import BuyerFactory, ProductFactory
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker]

UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def run_in_threads(target, count: int) -> list:
    """Run ``target()`` in ``count`` threads at once, each with its own database connection; return results."""
    results: list = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = target()
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a relay thread hung"
    if errors:
        raise errors[0]
    return results


def relay_until_idle(batch_size: int) -> list:
    """One relay process: its own broker connection, claiming batches until nothing is claimable."""
    results = []
    with closing(BrokerPublisher()) as publisher:
        while batch := relay_once(publisher, batch_size):
            results.extend(batch)
    return results


def message_ids(messages) -> list[str]:
    return [message.properties["message_id"] for message in messages]


# --- at least once -----------------------------------------------------------------------------


def test_a_publish_confirmed_but_never_recorded_is_published_again(transactional_db, event_tap, pending_events):
    [row] = pending_events(1)
    OutboxEvent.objects.filter(pk=row.pk).update(claimed_until=timezone.now() + timedelta(seconds=30))
    with closing(BrokerPublisher()) as publisher:
        publisher.publish(row.envelope)  # the broker confirmed it; then the process died before recording it

        assert relay_once(publisher) == [], "the relay must leave a row alone while its claim runs"

        OutboxEvent.objects.filter(pk=row.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
        [result] = relay_once(publisher)

    assert result.ok
    assert message_ids(event_tap.drain(expected=2)) == [str(row.event_id)] * 2, "at least once: consumers dedupe"
    row.refresh_from_db()
    assert row.published_at is not None
    assert row.attempts == 1
    assert row.claimed_until is None


def test_the_on_commit_publisher_and_a_relay_racing_over_the_same_rows_lose_nothing(
    transactional_db, event_tap, settings
):
    settings.OUTBOX_CLAIM_SECONDS = 0  # rows are claimable by the relay the moment they commit
    buyer = BuyerFactory()
    product = ProductFactory(stock=100)
    stop = threading.Event()
    relayed = []

    def relay() -> None:
        try:
            with closing(BrokerPublisher()) as publisher:
                while not stop.is_set():
                    batch = relay_once(publisher, batch_size=5)
                    relayed.extend(batch)
                    if not batch:
                        time.sleep(0.005)
        finally:
            db_connection.close()

    relay_thread = threading.Thread(target=relay)
    relay_thread.start()
    try:
        for _ in range(30):
            order_place(buyer=buyer, lines=[LineRequest(product.pk, 1)], correlation_id="race")
    finally:
        stop.set()
        relay_thread.join(timeout=30)
    assert not relay_thread.is_alive(), "the relay thread hung"

    event_ids = {str(event_id) for event_id in OutboxEvent.objects.values_list("event_id", flat=True)}
    assert len(event_ids) == 30
    delivered = message_ids(event_tap.drain(expected=30))
    assert set(delivered) == event_ids, "every event arrives at least once"
    assert all(result.ok for result in relayed)
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    print(f"relay published {len(relayed)} rows; {len(delivered) - len(event_ids)} duplicates on the tap")


# --- several relays ----------------------------------------------------------------------------


def test_three_relays_side_by_side_publish_every_event_exactly_once(transactional_db, event_tap, pending_events):
    rows = pending_events(200)

    per_relay = run_in_threads(lambda: relay_until_idle(batch_size=10), count=3)

    results = [result for relay_results in per_relay for result in relay_results]
    assert all(result.ok for result in results)
    assert len(results) == 200, "no row was claimed by two relays"
    delivered = message_ids(event_tap.drain(expected=200, timeout=20))
    assert sorted(delivered) == sorted(str(row.event_id) for row in rows)
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    assert set(OutboxEvent.objects.values_list("attempts", flat=True)) == {1}
    print("rows per relay:", [len(relay_results) for relay_results in per_relay])


def test_the_relay_command_publishes_oldest_first_until_nothing_is_left(transactional_db, event_tap, pending_events):
    rows = pending_events(25)
    out = StringIO()

    call_command("relay_outbox", "--once", "--batch-size", "10", stdout=out)

    assert "published 25, failed 0" in out.getvalue()
    assert message_ids(event_tap.drain(expected=25)) == [str(row.event_id) for row in rows]
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()


# --- failures ----------------------------------------------------------------------------------


def test_a_publish_that_keeps_failing_is_recorded_and_the_row_stays_pending(
    transactional_db, event_tap, pending_events
):
    rows = pending_events(3)
    with closing(BrokerPublisher(url=UNREACHABLE_BROKER, timeout=0.5)) as broken:
        first = relay_once(broken)
        assert [result.ok for result in first] == [False] * 3
        OutboxEvent.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
        second = relay_once(broken)
        assert [result.ok for result in second] == [False] * 3

    for row in OutboxEvent.objects.order_by("id"):
        assert row.published_at is None
        assert row.attempts == 2
        assert "Connection refused" in row.last_error
        # exponential backoff: 1s after the first failure, 2s after the second
        assert row.claimed_until - row.last_attempt_at == timedelta(seconds=2)
    assert event_tap.drain() == []

    with closing(BrokerPublisher()) as publisher:
        assert relay_once(publisher) == [], "a row is not retried before its backoff ends"
        results = eventually(lambda: relay_once(publisher), timeout=5, message="the backoff to end")

    assert [result.ok for result in results] == [True] * 3
    assert sorted(message_ids(event_tap.drain(expected=3))) == sorted(str(row.event_id) for row in rows)
    for row in OutboxEvent.objects.all():
        assert row.published_at is not None
        assert row.attempts == 3
        assert row.last_error == ""


def test_the_relay_command_exits_non_zero_when_the_broker_is_unreachable(transactional_db, pending_events, settings):
    pending_events(2)
    settings.BROKER_URL = UNREACHABLE_BROKER

    with pytest.raises(SystemExit) as exit_info:
        call_command("relay_outbox", "--once")

    assert exit_info.value.code == 1
    assert OutboxEvent.objects.filter(published_at__isnull=True, attempts=1).count() == 2


def test_an_unroutable_event_is_logged_and_stays_pending(transactional_db, throwaway_vhost, pending_events, caplog):
    publisher = BrokerPublisher(url=throwaway_vhost.url)
    with closing(publisher):
        pending_events(1)
        assert [result.ok for result in relay_once(publisher)] == [True]  # declares the topology in the vhost
        with Connection(throwaway_vhost.url) as broker:  # then every subscriber queue loses its binding
            for subscriber in topology.SUBSCRIBERS:
                broker.default_channel.queue_unbind(subscriber.queue_name, topology.EVENTS_EXCHANGE.name, "")
        [row] = pending_events(1)

        with caplog.at_level(logging.ERROR, logger="marketplace.events.outbox"):
            [result] = relay_once(publisher)
        with pytest.raises(Unroutable):
            publisher.publish(row.envelope)

    assert not result.ok
    assert result.error.startswith("Unroutable")
    row.refresh_from_db()
    assert row.published_at is None
    assert row.attempts == 1
    assert "no queue is bound" in row.last_error
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert any(str(row.event_id) in record.getMessage() for record in errors), caplog.text

    with closing(BrokerPublisher(url=throwaway_vhost.url)) as fresh:  # connecting declares the bindings again
        results = eventually(lambda: relay_once(fresh), timeout=5, message="the backoff to end")
    assert [result.ok for result in results] == [True]
    row.refresh_from_db()
    assert row.published_at is not None


def test_a_batch_that_runs_out_of_claim_time_hands_the_rest_back_unattempted(pending_events, settings):
    settings.OUTBOX_CLAIM_SECONDS = 0  # the claim is over before the first publish ends
    rows = pending_events(5)
    with closing(BrokerPublisher()) as publisher:
        results = relay_once(publisher, batch_size=5)

    assert [result.ok for result in results] == [True]
    pending = OutboxEvent.objects.filter(published_at__isnull=True).order_by("id")
    assert [row.pk for row in pending] == [row.pk for row in rows[1:]]
    assert all(row.attempts == 0 and row.claimed_until is None for row in pending)
