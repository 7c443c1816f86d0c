"""Poison: whatever reaches a subscriber queue, it ends as a FailedEvent and never blocks the queue.

Every kind here once went unrecorded or looped forever: a NUL byte PostgreSQL text cannot hold,
bytes that are not UTF-8, a message too big to be an event, a Celery message naming a task no
worker knows, and an event whose handler kills its worker every time.
"""

import json
import uuid

import pytest
from kombu import Connection, Producer

from marketplace.events import topology
from marketplace.events.models import FailedEvent, ProcessedEvent
from tests.factories import BuyerFactory
from tests.support.broker import queue_depth
from tests.support.waiting import eventually
from tests.support.workers import record_dead_letters

pytestmark = [pytest.mark.workers]

CONFIRMATION = topology.subscriber_named("order_confirmation")


def _publish_to_queue(broker_url, body: bytes, *, content_type="application/json", encoding="utf-8", headers=None):
    with Connection(broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange="",
            routing_key=CONFIRMATION.queue_name,
            serializer=None,
            content_type=content_type,
            content_encoding=encoding,
            headers=headers or {},
            delivery_mode=2,
        )


def _recorded(count: int) -> list[FailedEvent]:
    return eventually(
        lambda: (rows := record_dead_letters(subscriber=CONFIRMATION.name)) and len(rows) >= count and rows,
        timeout=30,
        message=f"{count} failed event(s)",
    )


def test_every_kind_of_poison_gets_a_record_and_the_events_behind_it_flow(
    workers, faults, shop, place_order, broker_url, broker
):
    big = json.dumps({"padding": "x" * (10 * 1024 * 1024)}).encode()
    poison = {
        "escaped NUL": json.dumps({"id": str(uuid.uuid4()), "a": "x\u0000y"}).encode(),
        "raw NUL": b'{"a": "x\x00y"}',
        "invalid UTF-8": b'{"b": "\xff\xfe\xfd\xfc"}',
        "10 MB": big,
    }
    for body in poison.values():
        _publish_to_queue(broker_url, body)
    unknown_task_id = str(uuid.uuid4())
    _publish_to_queue(
        broker_url,
        json.dumps([[{"id": str(uuid.uuid4())}], {}, {}]).encode(),
        headers={"lang": "py", "task": "nobody.knows.this", "id": unknown_task_id, "retries": 0},
    )
    _, envelope = place_order(shop.buyer, (shop.product, 1))

    eventually(lambda: faults.emails(), timeout=30, message="the confirmation behind the poison")
    rows = _recorded(5)
    assert len(rows) == 5
    assert all(row.status == FailedEvent.Status.FAILED and row.in_dead_letter_queue for row in rows)
    by_size = {row.body_size: row for row in rows}
    # The bytes are kept exactly, whatever PostgreSQL text could hold.
    for body in poison.values():
        assert bytes(by_size[len(body)].body) == body
    assert "\\x00" in by_size[len(poison["raw NUL"])].raw_body
    assert by_size[len(poison["escaped NUL"])].payload is None  # jsonb cannot hold \u0000
    unknown = next(row for row in rows if row.headers.get("task") == "nobody.knows.this")
    assert unknown.exception_class == "celery.exceptions.NotRegistered"
    assert all(row.exception_message for row in rows)
    assert queue_depth(broker, CONFIRMATION.dead_letter_queue_name) == 5
    assert ProcessedEvent.objects.filter(event_id=envelope["id"], subscriber=CONFIRMATION.name).exists()


@pytest.mark.long
def test_an_event_that_kills_its_worker_every_time_ends_at_the_delivery_limit(
    workers, faults, shop, place_order, broker
):
    doomed = BuyerFactory()
    faults.crash_on_email_to(doomed.email)
    _, first = place_order(doomed, (shop.product, 1))
    _, second = place_order(shop.buyer, (shop.product, 1))

    emails = eventually(lambda: faults.emails(), timeout=90, message="the confirmation behind the crash loop")
    assert [mail["event_id"] for mail in emails] == [second["id"]]
    [row] = _recorded(1)
    assert row.event_id == uuid.UUID(first["id"])
    assert row.exception_class == "marketplace.DeliveryLimitReached"
    assert "delivery limit" in row.exception_message
    assert row.payload == first
    starts = [s for s in faults.task_starts("notifications.send_order_confirmation") if s["event_id"] == first["id"]]
    assert len(starts) == row.attempts == topology.DELIVERY_LIMIT + 1
    assert queue_depth(broker, CONFIRMATION.dead_letter_queue_name) == 1
