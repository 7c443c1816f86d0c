"""Duplicates, worker crashes and malformed messages: the effect still happens exactly once."""

import json
import uuid

import pytest
from kombu import Connection, Producer

from marketplace.events import topology
from marketplace.events.broker import BrokerPublisher
from marketplace.events.envelope import InvalidEnvelope
from marketplace.events.models import FailedEvent, ProcessedEvent
from segmentation.models import CustomerProfile
from tests.support.broker import queue_depth
from tests.support.waiting import eventually
from tests.support.workers import record_dead_letters, worker_is_idle

pytestmark = [pytest.mark.workers]

CONFIRMATION = "notifications.send_order_confirmation"
SELLERS = "notifications.notify_sellers"
SEGMENTATION = "segmentation.update_customer_segment"


def test_the_same_event_delivered_three_times_has_one_effect_per_subscriber(
    workers, faults, shop, place_order, seller_webhook, broker_url
):
    _, envelope = place_order(shop.buyer, (shop.product, 3))
    publisher = BrokerPublisher(url=broker_url)
    for _ in range(2):  # the outbox already published it once
        publisher.publish(envelope)
    publisher.close()

    for task in (CONFIRMATION, SELLERS, SEGMENTATION):
        eventually(lambda task=task: len(faults.task_starts(task)) == 3, timeout=20, message=f"3 runs of {task}")
    assert [mail["to"] for mail in faults.emails()] == [[shop.buyer.email]]
    assert len(seller_webhook.accepted()) == 1
    profile = CustomerProfile.objects.get(buyer=shop.buyer)
    assert profile.order_count == 1
    assert ProcessedEvent.objects.filter(event_id=envelope["id"]).count() == 3
    assert not FailedEvent.objects.exists()


def test_a_worker_killed_mid_task_loses_nothing_and_repeats_nothing(
    workers, faults, shop, place_order, start_worker, session_workers
):
    faults.delay_email(30)  # the confirmation hangs in the email provider
    _, envelope = place_order(shop.buyer, (shop.product, 1))
    eventually(lambda: faults.task_starts(CONFIRMATION), timeout=15, message="the confirmation to start")

    session_workers["order_confirmation"].kill()  # SIGKILL, main process and pool child
    faults.heal()
    session_workers["order_confirmation"] = start_worker("order_confirmation")

    emails = eventually(lambda: faults.emails(), timeout=30, message="the redelivered confirmation")
    assert [mail["event_id"] for mail in emails] == [envelope["id"]]
    starts = faults.task_starts(CONFIRMATION)
    assert len(starts) == 2
    assert starts[0]["task_id"] == starts[1]["task_id"]  # the same message, redelivered
    # The email goes out inside the effect's transaction: its marker commits just after.
    eventually(lambda: ProcessedEvent.objects.filter(subscriber="order_confirmation").count() == 1, message="marker")
    assert not FailedEvent.objects.exists()


@pytest.mark.long
def test_a_retry_waits_in_the_broker_not_in_the_worker(workers, faults, shop, place_order, replace_worker, broker):
    worker = replace_worker("order_confirmation", SUBSCRIBER_RETRY_BACKOFF="6")
    faults.fail_email(1)
    _, envelope = place_order(shop.buyer, (shop.product, 1))

    eventually(lambda: faults.task_starts(CONFIRMATION), timeout=15, message="the first attempt")
    subscriber = topology.subscriber_named("order_confirmation")
    retry_queue = subscriber.retry_queue_name(6)
    eventually(lambda: queue_depth(broker, retry_queue) == 1, timeout=10, message="the retry in its retry queue")
    assert queue_depth(broker, subscriber.queue_name) == 0
    eventually(lambda: worker_is_idle(worker), timeout=10, message="the first attempt to be acknowledged")
    # Nothing is held by the worker: killing it now loses nothing and delays nothing.
    worker.kill()
    replace_worker("order_confirmation")

    emails = eventually(lambda: faults.emails(), timeout=30, message="the retried confirmation")
    assert [mail["event_id"] for mail in emails] == [envelope["id"]]
    starts = faults.task_starts(CONFIRMATION)
    assert [start["retries"] for start in starts] == [0, 1]
    assert 5.5 <= starts[1]["at"] - starts[0]["at"] <= 9


def _publish_raw(broker_url, body: bytes, content_type: str = "application/json") -> None:
    with Connection(broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=topology.EVENTS_EXCHANGE,
            routing_key="",
            serializer=None,
            content_type=content_type,
            content_encoding="utf-8",
            delivery_mode=2,
        )


def test_malformed_messages_are_recorded_dead_lettered_and_never_block_the_queue(
    workers, faults, shop, place_order, broker_url, broker
):
    _publish_raw(broker_url, b"{not json at all")
    _publish_raw(broker_url, json.dumps({"hello": "world"}).encode())
    _publish_raw(broker_url, json.dumps({"id": str(uuid.uuid4()), "type": "order.placed", "version": 99}).encode())
    _publish_raw(broker_url, b"plain words", content_type="text/plain")

    _, envelope = place_order(shop.buyer, (shop.product, 1))

    # The good event behind them is processed by everyone.
    eventually(lambda: faults.emails(), timeout=15, message="the confirmation")
    eventually(lambda: CustomerProfile.objects.filter(buyer=shop.buyer).exists(), message="segmentation")
    order_subscribers = topology.subscribers_of("order.placed")
    eventually(
        lambda: ProcessedEvent.objects.filter(event_id=envelope["id"]).count() == len(order_subscribers),
        message="all effects",
    )

    # A subscriber of other event types skips the order.placed of version 99 (it never reads
    # order.placed); the order subscribers dead-letter it with the three unreadable messages.
    for subscriber in topology.SUBSCRIBERS:
        expected = 4 if subscriber in order_subscribers else 3
        eventually(
            lambda s=subscriber, n=expected: len(record_dead_letters(subscriber=s.name)) == n,
            message=f"{expected} failed events for {subscriber.name}",
        )
        eventually(
            lambda s=subscriber, n=expected: queue_depth(broker, s.dead_letter_queue_name) == n,
            message=f"{expected} dead letters for {subscriber.name}",
        )
    unknown_version = FailedEvent.objects.filter(subscriber="order_confirmation", event_type="order.placed").get()
    assert unknown_version.exception_class == f"{InvalidEnvelope.__module__}.InvalidEnvelope"
    assert "version 99" in unknown_version.exception_message
    unreadable = FailedEvent.objects.filter(subscriber="order_confirmation", raw_body="{not json at all").get()
    assert unreadable.event_id is None
    assert unreadable.payload is None
    # Permanent failures are never retried: what is not an event never became a task, and the
    # event of an unknown version failed its schema in its one attempt.
    starts = faults.task_starts(CONFIRMATION)
    assert sorted(start["event_id"] for start in starts) == sorted([envelope["id"], str(unknown_version.event_id)])
    assert all(start["retries"] == 0 for start in starts)


def test_an_event_with_bad_data_fails_permanently_without_retries(workers, faults, shop, place_order, broker_url):
    _, envelope = place_order(shop.buyer, (shop.product, 1))
    eventually(lambda: ProcessedEvent.objects.filter(event_id=envelope["id"]).count() == 3, message="all effects")

    bad = {**envelope, "id": str(uuid.uuid4())}
    bad["data"] = {**bad["data"], "lines": [{**bad["data"]["lines"][0], "seller_id": 987654}]}
    publisher = BrokerPublisher(url=broker_url)
    publisher.publish(bad)
    publisher.close()

    [failed] = eventually(
        lambda: record_dead_letters(subscriber="seller_notification", event_id=bad["id"]),
        message="the seller notification to fail",
    )
    assert failed.exception_class == "notifications.handlers.UnknownSeller"
    assert failed.attempts == 1
    assert [s["retries"] for s in faults.task_starts(SELLERS) if s["event_id"] == bad["id"]] == [0]
