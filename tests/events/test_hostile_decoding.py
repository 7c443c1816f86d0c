"""Hostile messages, in process: the dead-letter decoders and the recorder's projection never raise
for any message a producer can publish, and give each distinct message exactly one FailedEvent
(issue 16: one such message once made the recorder loop forever).

Real PostgreSQL, no broker (except the subscriber task's retry-state test, which publishes its
retry or dead letter for real). The messages are what a reader of ours receives: headers through
py-amqp's own table encoding and decoding, the body as py-amqp hands it over
(tests/support/hostile.py).

A database error is no excuse here: the database is up, so a DataError or IntegrityError is a
message PostgreSQL refuses, and the recorder, which waits out database errors, would wait on it
forever.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from datetime import datetime
from decimal import Decimal

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from marketplace.events import dead_letters, topology
from marketplace.events.models import FailedEvent
from tests.support import hostile
from tests.support.workers import ROOT

DATABASE = DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples"))
# The default run: a few seconds per test. ``-m slow`` runs the same properties on many more and
# bigger messages (the *_long_run tests).
FAST = settings(
    max_examples=40,
    deadline=None,
    database=DATABASE,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=3_000)

SUBSCRIBERS = st.sampled_from(topology.SUBSCRIBERS)


def jsonb_accepts(value) -> None:
    """PostgreSQL's jsonb holds ``value`` (raises what it raises if not)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb", [json.dumps(value)])


# --- the pure decoders ---------------------------------------------------------------------------


def check_body_bytes(message: hostile.HostileMessage) -> None:
    received = hostile.received(message)
    body = dead_letters.body_bytes(received)
    assert isinstance(body, bytes)


@settings(FAST)
@given(hostile.messages(max_body=4096))
@example(hostile.HostileMessage(body=b"a" * 64, content_encoding="idna"))
@example(hostile.HostileMessage(body=b"\x00", content_encoding="utf-16"))
def test_body_bytes_never_raises(message):
    check_body_bytes(message)


def check_decoders(message: hostile.HostileMessage) -> None:
    received = hostile.received(message)
    headers = received.headers
    body = message.body
    envelope = dead_letters.decoded_envelope(body, headers)
    event_id, lookup = dead_letters.record_lookup(envelope, body)
    assert event_id is None or isinstance(event_id, uuid.UUID)
    assert isinstance(lookup, dict)
    key = dead_letters.dead_letter_key(body, headers)
    assert isinstance(key, str)
    assert len(key) <= FailedEvent._meta.get_field("dead_letter_key").max_length
    assert key == dead_letters.dead_letter_key(body, headers)  # the same key when seen again


@settings(FAST)
@given(hostile.messages(max_body=4096))
@example(hostile.HostileMessage(body=b"[" * 100_000 + b"]" * 100_000))
@example(hostile.HostileMessage(body=b"{}", headers={"x-death": [1]}))
@example(hostile.HostileMessage(body=b"{}", headers={hostile.DEAD_LETTER_ID: "k" * 100}))
def test_the_dead_letter_decoders_never_raise(message):
    check_decoders(message)


@pytest.mark.django_db
@settings(FAST)
@given(hostile.hostile_headers().filter(hostile.fits_in_a_frame))
@example({"h": float("nan")})
@example({"h": "a\x00b"})
@example({"h": "\ud800"})
@example({"h": {"\ud800": 1}})
def test_jsonable_headers_never_raise_and_jsonb_holds_them(headers):
    jsonable = dead_letters.jsonable_headers(hostile.received_headers(headers))
    jsonb_accepts(jsonable)


@pytest.mark.slow
@settings(SLOW)
@given(hostile.messages(max_body=1024 * 1024))
def test_the_dead_letter_decoders_never_raise_long_run(message):
    check_body_bytes(message)
    check_decoders(message)


# --- the projection: record() ----------------------------------------------------------------------


def check_record(subscriber: topology.Subscriber, message: hostile.HostileMessage) -> None:
    FailedEvent.objects.all().delete()
    received = hostile.received(message, routing_key=subscriber.dead_letter_queue_name)
    body = dead_letters.body_bytes(received)
    kwargs = {
        "subscriber": subscriber,
        "body": body,
        "headers": received.headers,
        "content_type": received.content_type,
    }

    assert dead_letters.record(**kwargs) is True
    rows = list(FailedEvent.objects.filter(subscriber=subscriber.name))
    assert len(rows) == 1
    [row] = rows
    assert bytes(row.body) == body[: 16 * 1024 * 1024]
    assert row.body_size == len(body)
    kind, key = hostile.expected_record_key(body, received.headers)
    if kind == "event":
        # A readable event id is kept, whatever else the message holds (else a second dead
        # lettering of the same event makes a second record, and a replay has no id to dedupe on).
        assert str(row.event_id) == key, (
            f"recorded without its event id: {row.exception_class}: {row.exception_message}"
        )
    else:
        assert row.event_id is None
        assert row.body_digest == key
    # The recorder sees the same dead letter again (a redelivery): nothing new.
    assert dead_letters.record(**kwargs) is False
    assert FailedEvent.objects.filter(subscriber=subscriber.name).count() == 1


@pytest.mark.django_db
@settings(FAST)
@given(SUBSCRIBERS, hostile.messages(max_body=16_384))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"[" * 100_000 + b"]" * 100_000))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b'{"id": "%s", "x": NaN}' % str(uuid.uuid4()).encode()))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={hostile.ATTEMPTS: "many"}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={hostile.ATTEMPTS: 2**40}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={hostile.ATTEMPTS: -1}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={"x-delivery-count": "x"}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={"x-first-death-reason": "r" * 300}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={"x-first-death-reason": "\x00"}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={"h": Decimal("1.5")}))
@example(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers={"h": datetime(2020, 1, 1)}))
def test_record_never_raises_and_gives_one_failed_event_per_message(subscriber, message):
    check_record(subscriber, message)


@pytest.mark.slow
@pytest.mark.django_db
@settings(SLOW)
@given(SUBSCRIBERS, hostile.messages(max_body=8 * 1024 * 1024))
def test_record_never_raises_long_run(subscriber, message):
    check_record(subscriber, message)


def check_batch(subscriber: topology.Subscriber, batch: list[hostile.HostileMessage]) -> None:
    FailedEvent.objects.all().delete()
    expected = set()
    for message in batch:
        received = hostile.received(message, routing_key=subscriber.dead_letter_queue_name)
        body = dead_letters.body_bytes(received)
        dead_letters.record(
            subscriber=subscriber, body=body, headers=received.headers, content_type=received.content_type
        )
        expected.add(hostile.expected_record_key(body, received.headers))
    assert FailedEvent.objects.filter(subscriber=subscriber.name).count() == len(expected)


@pytest.mark.django_db
@settings(FAST, max_examples=10)
@given(SUBSCRIBERS, st.lists(hostile.messages(max_body=2048), min_size=2, max_size=6))
def test_a_batch_of_messages_gets_exactly_one_failed_event_per_distinct_message(subscriber, batch):
    check_batch(subscriber, batch)


# --- the subscriber task's retry-state headers ------------------------------------------------------


def retry_state() -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(hostile.RETRY_STATE_HEADERS), hostile.amqp_values(3), min_size=1)


def check_task_keeps_its_message(broker_url, task_exc, headers: dict) -> None:
    """A failing task whose request carries ``headers`` either publishes its retry or dead letter
    (and then raises Retry or the failure itself) or returns its message to the broker (Reject):
    it never fails with a third exception, which would acknowledge the message with no trace."""
    from celery.exceptions import Reject, Retry
    from kombu import Connection

    from marketplace.celery import app

    app.loader.import_default_modules()
    subscriber = topology.subscriber_named("order_confirmation")
    task = app.tasks[subscriber.task]
    received = hostile.received_headers(headers)
    with Connection(broker_url) as conn:
        for name in [subscriber.dead_letter_queue_name, topology.RECORDER_QUEUE_NAME] + [
            subscriber.retry_queue_name(d) for d in (1, 2)
        ]:
            conn.default_channel.queue_purge(name)
    task.push_request(
        id=str(uuid.uuid4()),
        args=[{"id": str(uuid.uuid4()), "type": "order.placed"}],
        kwargs={},
        retries=0,
        delivery_info={"exchange": "", "routing_key": subscriber.queue_name},
        headers=received,
        hostname="hostile@test",
        **received,
    )
    raised: BaseException | None = None
    try:
        task.handle(task_exc)
    except (Retry, Reject):
        return
    except BaseException as exc:
        raised = exc
    finally:
        task.pop_request()
    assert raised is task_exc, f"the task failed with {raised!r} instead: its message is acknowledged and lost"


@pytest.mark.broker
@pytest.mark.django_db
@settings(FAST, max_examples=25)
@given(retry_state(), st.sampled_from(["permanent", "transient", "infrastructure"]))
@example({hostile.ATTEMPTS: "many"}, "permanent")
@example({hostile.ATTEMPTS: 1.5}, "transient")
@example({hostile.INFRA_WAITS: "x"}, "permanent")
@example({hostile.WAITING_SINCE: 5}, "infrastructure")
@example({hostile.FIRST_FAILED_AT: {"a": 1}}, "permanent")
def test_arbitrary_retry_state_headers_never_make_a_failed_task_lose_its_message(broker_url, headers, kind):
    from django.db import OperationalError

    exc = {
        "permanent": ValueError("permanent"),
        "transient": ConnectionError("transient"),
        "infrastructure": OperationalError("our database is down"),
    }[kind]
    check_task_keeps_its_message(broker_url, exc, headers)


# --- what the runs above found, by name (issue 16) ---------------------------------------------------


@pytest.mark.django_db
def test_a_deeply_nested_json_body_is_recorded_not_looped():
    """json.loads raises RecursionError (not a ValueError) on 10**5 levels: the recorder once took
    that for a lost broker and looped on the message."""
    check_record(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.django_db
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_non_finite_number_in_a_body_keeps_the_event_id(number):
    """jsonb refuses NaN and infinities that Python's json reads: the payload is dropped, the id kept."""
    body = b'{"id": "%s", "type": "order.placed", "x": %s}' % (str(uuid.uuid4()).encode(), number)
    check_record(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=body))


@pytest.mark.django_db
def test_a_lone_surrogate_in_a_body_keeps_the_event_id():
    body = b'{"id": "%s", "data": "\\ud800"}' % str(uuid.uuid4()).encode()
    check_record(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=body))


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["a\x00b", "\udcff", {"\ud800": 1}, [b"\xff"]])
def test_a_nul_or_a_lone_surrogate_in_a_header_is_recorded_with_the_headers(value):
    """py-amqp reads header strings with surrogatepass; jsonb holds neither NUL nor lone surrogates."""
    message = hostile.HostileMessage(body=b"{}", headers={"h": value})
    check_record(topology.SUBSCRIBERS[0], message)
    jsonb_accepts(dead_letters.jsonable_headers(hostile.received_headers(message.headers)))
    assert FailedEvent.objects.get().headers  # not dropped as unreadable


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [
        {hostile.EXCEPTION_CLASS: "x", hostile.ATTEMPTS: "many"},
        {hostile.EXCEPTION_CLASS: "x", hostile.ATTEMPTS: 2**40},
        {hostile.EXCEPTION_CLASS: "x", hostile.ATTEMPTS: -1},
        {"x-delivery-count": "x"},
        {"x-first-death-reason": "r" * 300},
        {"x-first-death-reason": "\x00"},
        {"x-death": [1]},
    ],
)
def test_a_failure_header_of_the_wrong_type_or_size_is_recorded(headers):
    """Each once raised in record() (ValueError, or a DataError taken for a database outage)."""
    check_record(topology.SUBSCRIBERS[0], hostile.HostileMessage(body=b"{}", headers=headers))


@pytest.mark.django_db
def test_a_header_table_deeper_than_the_recursion_limit_is_recorded():
    """py-amqp cannot read the header frame at all: the reader gets a marker header and the bytes."""
    message = hostile.HostileMessage(body=b"{}", headers={"t": hostile.deep_table(5_000)})
    check_record(topology.SUBSCRIBERS[0], message)


@pytest.mark.django_db
def test_a_header_timestamp_past_year_9999_is_recorded():
    message = hostile.HostileMessage(body=b"{}", headers={"t": hostile.far_future(2**40)})
    check_record(topology.SUBSCRIBERS[0], message)


@pytest.mark.broker
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"", "utf-16"), (b"-0", "utf-16"), (b"a\x00", "utf-16"), (b"\xef\xbb\xbf{}", "utf-8-sig"), (b"+-", "utf-7")],
)
def test_a_dead_letter_is_recorded_byte_for_byte_whatever_its_content_encoding(broker_url, body, encoding):
    """py-amqp decodes a body by its content_encoding and body_bytes encodes it again: utf-16 adds a
    BOM, so the record (and its digest) was not what was sent, and two messages with the same bytes
    got two FailedEvents (seen live: b"-0" recorded as b"\xff\xfe-0"). Through the real recorder."""
    from django.core.management import call_command
    from kombu import Connection, Producer

    subscriber = topology.SUBSCRIBERS[0]
    with Connection(broker_url) as conn:
        for name in (topology.RECORDER_QUEUE_NAME, subscriber.dead_letter_queue_name):
            conn.default_channel.queue_purge(name)
        Producer(conn.default_channel).publish(
            body,
            exchange=topology.DEAD_LETTER_EXCHANGE.name,
            routing_key=subscriber.dead_letter_queue_name,
            serializer=None,
            content_type="application/json",
            content_encoding=encoding,
        )
        call_command("record_dead_letters", "--once", stdout=io.StringIO())
        conn.default_channel.queue_purge(subscriber.dead_letter_queue_name)
    [row] = FailedEvent.objects.filter(subscriber=subscriber.name)
    assert bytes(row.body) == body
    assert row.body_digest == hashlib.sha256(body).hexdigest()


@pytest.mark.broker
@pytest.mark.django_db
@pytest.mark.parametrize("attempts", ["many", 1.5, {"a": 1}, b"\xff", -3])
def test_a_non_integer_attempts_header_never_loses_a_failed_message(broker_url, attempts):
    check_task_keeps_its_message(broker_url, ValueError("permanent"), {hostile.ATTEMPTS: attempts})
