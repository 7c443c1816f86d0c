"""The dead-letter recorder: every message reaching it ends as a record or, if the database refuses
even the plainest record, parked with an alert; none stops it or the messages behind it."""

import io
import json
import re
import uuid
from datetime import datetime
from decimal import Decimal

import amqp
import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from kombu import Connection, Producer

from marketplace.events import dead_letters, topology
from marketplace.events import headers as message_headers
from marketplace.events.models import FailedEvent
from marketplace.internals import amqp as amqp_internals
from marketplace.metrics.collectors import broker_gauges
from tests.support.broker import queue_depth
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker]

CONFIRMATION = topology.subscriber_named("order_confirmation")
DEEP = b"[" * 100_000 + b"]" * 100_000


def _dead_letter(broker_url, body: bytes, *, routing_key=CONFIRMATION.dead_letter_queue_name, exchange=None, **kw):
    """Publish ``body`` as RabbitMQ dead-letters a message: to the dead-letter exchange."""
    with Connection(broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=topology.DEAD_LETTER_EXCHANGE.name if exchange is None else exchange,
            routing_key=routing_key,
            serializer=None,
            content_type=kw.pop("content_type", "application/json"),
            content_encoding=kw.pop("content_encoding", "utf-8"),
            headers=kw.pop("headers", {"x-first-death-reason": "rejected", "x-first-death-queue": "q"}),
            delivery_mode=2,
            **kw,
        )


def _record() -> str:
    out = io.StringIO()
    call_command("record_dead_letters", "--once", stdout=out)
    return out.getvalue()


def _gauge(name: str) -> float:
    return next(sample.value for family in broker_gauges() for sample in family.samples if sample.name == name)


@pytest.fixture
def inbox_empty(broker_url, purge_queues):
    yield
    with Connection(broker_url) as conn:
        assert queue_depth(conn, topology.RECORDER_QUEUE_NAME) == 0
        conn.default_channel.queue_purge(topology.PARKED_QUEUE_NAME)


def test_a_body_json_cannot_parse_without_recursing_is_recorded_with_the_one_behind_it(db, broker_url, inbox_empty):
    _dead_letter(broker_url, DEEP)
    behind = json.dumps({"id": str(uuid.uuid4()), "type": "order.placed"}).encode()
    _dead_letter(broker_url, behind)

    assert "recorded 2 dead letter(s)" in _record()

    deep = FailedEvent.objects.get(body_size=len(DEEP))
    assert bytes(deep.body) == DEEP
    assert deep.payload is None
    assert deep.exception_class == "marketplace.DeadLettered.rejected"
    assert FailedEvent.objects.filter(payload__type="order.placed").count() == 1


def test_headers_of_every_amqp_type_are_kept_as_json(db, broker_url, inbox_empty):
    headers = {
        "marketplace-attempts": "not a number",
        "marketplace-first-failed-at": "2026-01-01T00:00:00",  # no zone: taken as UTC
        "marketplace-exception-class": "x",
        "a decimal": Decimal("1.25"),
        "bytes": b"\xff\x00",
        "a time": datetime(2026, 1, 2, 3, 4, 5),
        "nested": {"list": [1, "two", [3.5, None, True]], "deeper": {"k": b"v"}},
    }
    _dead_letter(broker_url, b"not json", headers=headers)

    _record()

    failed = FailedEvent.objects.get()
    assert failed.attempts == 1
    assert failed.first_failed_at.isoformat() == "2026-01-01T00:00:00+00:00"
    assert failed.headers["a decimal"] == "1.25"
    assert failed.headers["bytes"] == "\\xff\\x00"
    assert failed.headers["nested"] == {"list": [1, "two", [3.5, None, True]], "deeper": {"k": "v"}}


def test_properties_py_amqp_cannot_decode_still_give_a_record(db, broker_url, inbox_empty):
    """A content type that is not UTF-8: py-amqp raised while reading the connection, and every
    consumer on it took that for a lost broker (amqp_internals.py)."""
    behind = json.dumps({"id": str(uuid.uuid4())}).encode()
    with Connection(broker_url) as conn:
        conn.connect()
        channel = conn.connection.channel()  # py-amqp's own: it writes bytes as they are
        for body, content_type in ((b"odd properties", b"text/\xff\xfe"), (behind, b"application/json")):
            channel.basic_publish(
                amqp.Message(body, content_type=content_type, application_headers={}),
                exchange=topology.DEAD_LETTER_EXCHANGE.name,
                routing_key=CONFIRMATION.dead_letter_queue_name,
            )

    assert "recorded 2 dead letter(s)" in _record()

    odd = FailedEvent.objects.get(body_size=len(b"odd properties"))
    assert "UnicodeDecodeError" in odd.headers[amqp_internals.UNREADABLE_PROPERTIES]


def test_a_dead_letter_the_database_refuses_is_parked_and_alerted_and_the_ones_behind_flow(
    db, broker_url, inbox_empty, settings
):
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute(
            """
            CREATE FUNCTION refuse_park_me() RETURNS trigger AS $$
            BEGIN
                IF NEW.raw_body LIKE '%park-me%' THEN RAISE EXCEPTION 'refused on purpose'; END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse_park_me BEFORE INSERT OR UPDATE ON events_failedevent
                FOR EACH ROW EXECUTE FUNCTION refuse_park_me();
            """
        )
    _dead_letter(broker_url, b"park-me, please")
    _dead_letter(broker_url, b"record me")

    _record()

    assert list(FailedEvent.objects.values_list("raw_body", flat=True)) == ["record me"]
    with Connection(broker_url) as conn:
        assert queue_depth(conn, topology.PARKED_QUEUE_NAME) == 1
        parked = topology.parked_queue()(conn.default_channel).get(no_ack=False)
        assert dead_letters.body_bytes(parked) == b"park-me, please"
        assert "refused on purpose" in parked.headers[message_headers.PARK_REASON]
        parked.requeue()
    assert _gauge("marketplace_parked_dead_letters") == 1
    assert any("could not be recorded" in message.subject for message in mail.outbox)


def test_a_message_published_straight_to_the_recorder_inbox_is_parked(db, broker_url, inbox_empty):
    _dead_letter(broker_url, b"for nobody", exchange="", routing_key=topology.RECORDER_QUEUE_NAME)

    _record()

    assert not FailedEvent.objects.exists()
    with Connection(broker_url) as conn:
        assert queue_depth(conn, topology.PARKED_QUEUE_NAME) == 1


def test_a_message_in_a_dead_letter_queue_without_a_record_gets_one(db, broker_url, inbox_empty):
    """Left there by an older release or another deployment, or published straight to the queue:
    the queue's depth (what the dead-letter alerts watch) must be failures an operator can see."""
    _dead_letter(broker_url, b"orphan", exchange="", routing_key=CONFIRMATION.dead_letter_queue_name)

    _record()
    _record()

    [orphan] = FailedEvent.objects.all()
    assert orphan.raw_body == "orphan"
    assert orphan.in_dead_letter_queue
    with Connection(broker_url) as conn:
        assert queue_depth(conn, CONFIRMATION.dead_letter_queue_name) == 1


def test_the_recorder_consumes_its_inbox_rather_than_polling(
    broker_url, transactional_db, purge_queues, start_recorder
):
    recorder = start_recorder()
    try:
        assert recorder.inbox_consumers() == 1
        _dead_letter(broker_url, DEEP)
        _dead_letter(broker_url, b"behind it")

        eventually(lambda: FailedEvent.objects.count() == 2, timeout=30, message="both dead letters recorded")
        assert recorder.alive()
        assert "lost the broker" not in recorder.log_text()
    finally:
        recorder.stop()


def test_one_cause_is_one_alert_however_many_events_it_failed(db, broker_url, inbox_empty):
    for _ in range(3):
        _dead_letter(broker_url, json.dumps({"id": str(uuid.uuid4()), "type": "order.placed"}).encode())
    _dead_letter(broker_url, b"another cause", headers={"x-first-death-reason": "expired", "x-first-death-queue": "q"})

    _record()

    assert FailedEvent.objects.count() == 4
    alerts = [message.subject for message in mail.outbox]
    rejected = [subject for subject in alerts if "(unreadable message)" not in subject]
    # The first failure of a cause is alerted at once; those after it within the window in one more
    # email, "and N more like it" (sent when the window ends or, here, when the recorder stops).
    assert 1 <= len(rejected) <= 2, alerts
    counted = sum(1 + int(match.group(1)) if (match := re.search(r"and (\d+) more", s)) else 1 for s in rejected)
    assert counted == 3, alerts
    assert len(alerts) - len(rejected) == 1, alerts
