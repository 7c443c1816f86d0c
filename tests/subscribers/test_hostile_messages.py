"""Hostile messages, live: whatever a producer with publish rights puts anywhere on our broker, the
system records it once and keeps going (issue 16).

Each example publishes a batch of hostile messages (tests/support/hostile.py) to the fanout
exchange, straight to a subscriber queue, through the dead-letter exchange (to a ``.dead`` queue
and the recorder's inbox), straight to a ``.dead`` queue and straight to the recorder's inbox,
interleaved with real orders placed through the API, against real worker processes and a real
``record_dead_letters`` process. Within a bound:

- every hostile message is exactly one FailedEvent per subscriber it reached, except where that
  subscriber's consumer skips it (an event envelope of a type the subscriber does not handle);
  what reaches a ``.dead`` queue belongs to that queue's subscriber; what reaches the recorder's
  inbox under no subscriber's routing key is parked;
- every real order has each of its effects exactly once;
- no worker or recorder exits or loops (a log line saying it reconnects or waits for the database);
- every queue drains (nothing ready, nothing unacknowledged) but the ``.dead`` queues, each as
  deep as its subscriber's open FailedEvents, and the parked queue;
- /healthz and /metrics say so.

The oracle (``Expectation``) is worked out from the message alone, per message: a failure names
the messages behind it, which is what Hypothesis's shrinking would give, without re-running a
live batch hundreds of times. The default run therefore does not shrink; ``-m slow`` does.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from kombu import Connection, Producer
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads, prepare_accept_content

from marketplace.celery import app as celery_app
from marketplace.events import topology
from marketplace.events.models import FailedEvent, ProcessedEvent
from tests.support import hostile
from tests.support.broker import RABBITMQCTL, purge_subscriber_queues
from tests.support.recorder import looping_lines
from tests.support.workers import ROOT

pytestmark = [pytest.mark.workers]

SUBSCRIBERS = topology.SUBSCRIBERS
PARKED = getattr(topology, "PARKED_QUEUE_NAME", None)
OPEN = (FailedEvent.Status.FAILED, FailedEvent.Status.REPLAYING)
# The effects of one order.placed: one ProcessedEvent per order subscriber (loyalty_rewards acts
# on customer.segment_changed only).
ORDER_SUBSCRIBERS = {s.name for s in SUBSCRIBERS if "order.placed" in s.event_types}
METRICS_CREDENTIALS = "prometheus:hostile-s3cret"
DRAIN_SECONDS = 60.0

LIVE = settings(
    max_examples=4,  # plus the REGRESSIONS batch: five live batches, about a minute
    deadline=None,
    # HOSTILE_FRESH=1: draw new batches instead of replaying the last failing one first (to look for
    # other failures while a known one is being fixed).
    database=None
    if os.environ.get("HOSTILE_FRESH")
    else DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples")),
    # No shrinking by default: each step is a live batch of several seconds (see the module doc).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
LIVE_LONG = settings(LIVE, max_examples=40, phases=list(Phase))


# --- where a message goes, and what should become of it ------------------------------------------


@dataclass(frozen=True)
class Destination:
    kind: str  # fanout | queue | dead-letter-exchange | dead-queue | recorder-inbox
    subscriber: topology.Subscriber | None = None

    def route(self) -> tuple[str, str]:
        """(exchange, routing key)."""
        if self.kind == "fanout":
            return topology.EVENTS_EXCHANGE.name, ""
        if self.kind == "queue":
            return "", self.subscriber.queue_name
        if self.kind == "dead-letter-exchange":
            return topology.DEAD_LETTER_EXCHANGE.name, self.subscriber.dead_letter_queue_name
        if self.kind == "dead-queue":
            return "", self.subscriber.dead_letter_queue_name
        return "", topology.RECORDER_QUEUE_NAME

    def __repr__(self) -> str:
        return f"{self.kind}:{self.subscriber.name}" if self.subscriber else self.kind


def destinations() -> st.SearchStrategy[Destination]:
    per_subscriber = st.tuples(
        st.sampled_from(["queue", "dead-letter-exchange", "dead-queue"]), st.sampled_from(SUBSCRIBERS)
    ).map(lambda t: Destination(*t))
    return st.one_of(st.just(Destination("fanout")), per_subscriber, st.just(Destination("recorder-inbox")))


def adopted_type(message: hostile.HostileMessage) -> str | None:
    """The event type a subscriber's consumer reads in ``message`` before it decides to act on it
    or skip it (consumer.py: a JSON object with a str ``type`` and an ``id``, decoded as the
    worker decodes it); None when it is no event (it is then dead-lettered and recorded)."""
    received = hostile.received(message)
    if "task" in received.headers:
        return None
    try:
        with hostile.reader_recursion_limit():
            decoded = loads(
                received.body,
                received.content_type,
                received.content_encoding,
                accept=prepare_accept_content(celery_app.conf.accept_content),
            )
    except (ContentDisallowed, Exception):
        return None
    if isinstance(decoded, dict) and isinstance(decoded.get("type"), str) and "id" in decoded:
        return decoded["type"]
    return None


def record_key(message: hostile.HostileMessage) -> tuple[str, str]:
    """Which FailedEvent of a subscriber this message is, decoded as the recorder reads it."""
    received = hostile.received(message)
    with hostile.reader_recursion_limit():
        return hostile.expected_record_key(message.body, received.headers)


@dataclass
class Expectation:
    """What the whole batch should leave behind."""

    records: dict[str, dict[tuple[str, str], list[str]]]  # subscriber -> record key -> messages
    parked: list[str]
    skipped: dict[str, dict[tuple[str, str], list[str]]]  # what each subscriber should skip, for reports

    @classmethod
    def of(cls, batch: list[tuple[hostile.HostileMessage, Destination] | None]) -> Expectation:
        records: dict[str, dict[tuple[str, str], list[str]]] = {s.name: defaultdict(list) for s in SUBSCRIBERS}
        parked: list[str] = []
        skipped: dict[str, dict[tuple[str, str], list[str]]] = {s.name: defaultdict(list) for s in SUBSCRIBERS}
        for index, item in enumerate(batch):
            if item is None:  # refused by the broker at the publish
                continue
            message, destination = item
            label = f"#{index} {destination!r} {message!r}"
            if destination.kind == "recorder-inbox":
                parked.append(label)
                continue
            if destination.kind in ("dead-letter-exchange", "dead-queue"):
                records[destination.subscriber.name][record_key(message)].append(label)
                continue
            reached = SUBSCRIBERS if destination.kind == "fanout" else (destination.subscriber,)
            event_type = adopted_type(message)
            for subscriber in reached:
                if event_type is not None and event_type not in subscriber.event_types:
                    skipped[subscriber.name][record_key(message)].append(label)
                    continue  # acknowledged and skipped: not this subscriber's event
                records[subscriber.name][record_key(message)].append(label)
        return cls(records=records, parked=parked, skipped=skipped)


# --- the broker, as the test sees it ------------------------------------------------------------------


def vhost_of(broker_url: str) -> str:
    return urlparse(broker_url).path.lstrip("/") or "/"


def queue_depths(broker_url: str) -> dict[str, tuple[int, int]]:
    """name -> (ready, unacknowledged), exact (rabbitmqctl, not the management API's sampled stats)."""
    for attempt in range(10):
        result = subprocess.run(
            [
                RABBITMQCTL,
                "list_queues",
                "-q",
                "-p",
                vhost_of(broker_url),
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode == 0:
            depths = {}
            for line in result.stdout.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1].isdigit():
                    depths[parts[0]] = (int(parts[1]), int(parts[2]))
            return depths
        time.sleep(1 + attempt)  # the shared broker may be restarting for another test run
    raise RuntimeError(f"rabbitmqctl list_queues failed: {result.stderr}")


def purge_everything(broker_url: str) -> None:
    purge_subscriber_queues(broker_url)
    if PARKED:
        with Connection(broker_url) as conn:
            conn.default_channel.queue_declare(PARKED, passive=True)
            conn.default_channel.queue_purge(PARKED)


def publish_batch(
    broker_url: str, batch: list[tuple[hostile.HostileMessage, Destination]], indexes: range
) -> dict[int, str]:
    """Publish each message (confirmed); why the broker refused those it refused (not in the oracle)."""
    refused = {}
    conn = Connection(broker_url, transport_options={"confirm_publish": True})
    try:
        for index in indexes:
            message, destination = batch[index]
            exchange, routing_key = destination.route()
            try:
                with hostile.deep_recursion():
                    Producer(conn.default_channel).publish(
                        message.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        serializer=None,
                        **message.publish_options(),
                    )
            except Exception as exc:  # the broker closed the channel or connection: open a new one
                refused[index] = f"#{index} {destination!r} refused by the broker: {type(exc).__name__}: {exc}"
                conn.release()
                conn = Connection(broker_url, transport_options={"confirm_publish": True})
    finally:
        conn.release()
    return refused


# --- what the system should look like once it has drained ---------------------------------------------


def violations(
    *,
    expected: Expectation,
    orders: list[dict],
    faults,
    broker_url: str,
    processes: dict[str, object],
    log_offsets: dict[str, int],
    look_at_queues: bool = True,
) -> list[str]:
    found: list[str] = []
    rows = list(FailedEvent.objects.all())
    by_subscriber: dict[str, list[FailedEvent]] = defaultdict(list)
    for row in rows:
        by_subscriber[row.subscriber].append(row)
    for subscriber in SUBSCRIBERS:
        wanted = expected.records[subscriber.name]
        actual = by_subscriber.get(subscriber.name, [])
        ids = Counter(str(row.event_id) for row in actual if row.event_id)
        for (kind, key), labels in wanted.items():
            if kind == "event" and ids[key] != 1:
                found.append(f"{subscriber.name}: {ids[key]} FailedEvent(s) for event {key}, want 1: {_short(labels)}")
        want_idless = {key: labels for (kind, key), labels in wanted.items() if kind == "body"}
        idless = [row for row in actual if not row.event_id]
        if len(idless) != len(want_idless):
            # Match what can be matched (a raw dead letter keeps the body's digest) to say which differ.
            matched = {row.body_digest for row in idless} & set(want_idless)
            found.append(
                f"{subscriber.name}: {len(idless)} id-less FailedEvent(s), want {len(want_idless)}; "
                f"expected, not matched by body: {[_short(ls) for k, ls in want_idless.items() if k not in matched]}; "
                f"recorded, not matched: "
                f"{[_row(row) for row in idless if row.body_digest not in matched]}"
            )
        unexpected = [
            str(row.event_id) for row in actual if row.event_id and ("event", str(row.event_id)) not in wanted
        ]
        if unexpected:
            skipped = [_short(expected.skipped[subscriber.name][("event", key)], 5000) for key in unexpected]
            found.append(
                f"{subscriber.name}: FailedEvents for events no hostile message carried: "
                f"{[_row(row) for row in actual if str(row.event_id) in unexpected]}; the message(s) it should "
                f"have skipped: {skipped}"
            )
    for order in orders:
        event_id = order["event_id"]
        emails = [mail for mail in faults.emails() if mail["event_id"] == event_id]
        if len(emails) != 1:
            found.append(f"order {order['id']}: {len(emails)} confirmation email(s), want 1")
        processed = Counter(ProcessedEvent.objects.filter(event_id=event_id).values_list("subscriber", flat=True))
        if set(processed) != ORDER_SUBSCRIBERS or any(count != 1 for count in processed.values()):
            found.append(
                f"order {order['id']}: processed by {dict(processed)}, want once by each of {ORDER_SUBSCRIBERS}"
            )
    depths = queue_depths(broker_url) if look_at_queues else {}
    open_failures = Counter(FailedEvent.objects.filter(status__in=OPEN).values_list("subscriber", flat=True))
    for name, (ready, unacked) in sorted(depths.items()):
        subscriber = topology.subscriber_for_dead_letter_queue(name)
        if subscriber is not None:
            if (ready, unacked) != (open_failures[subscriber.name], 0):
                found.append(
                    f"{name}: {ready} ready / {unacked} unacknowledged, want as many as the open FailedEvents "
                    f"of {subscriber.name} ({open_failures[subscriber.name]})"
                )
        elif name == PARKED:
            if (ready, unacked) != (len(expected.parked), 0):
                found.append(
                    f"{name}: {ready} ready / {unacked} unacknowledged, want {len(expected.parked)} parked: "
                    f"{_short(expected.parked)}; parked: {parked_messages(broker_url)}"
                )
        elif name.startswith("marketplace.") and (ready, unacked) != (0, 0):
            found.append(f"{name}: {ready} ready / {unacked} unacknowledged, want it drained")
    for name, process in processes.items():
        if process.process.poll() is not None:
            found.append(f"{name} exited: {process.log_path}")
        if not process.log_path.exists():  # another pytest session pruned this one's temporary directory
            continue
        text = process.log_path.read_text(errors="replace")[log_offsets[name] :]
        looping = looping_lines(text)
        # One line per process is a broker restart (the shared broker is stopped by other test runs
        # now and then); a loop on one message repeats it, with backoff, for as long as it lasts.
        if len(looping) > 2:
            found.append(f"{name} loops ({len(looping)} line(s)): {looping[:3]}")
    return found


def _short(labels: list[str], limit: int = 400) -> list[str]:
    return [label if len(label) <= limit else label[:limit] + "..." for label in labels]


def _row(row: FailedEvent) -> str:
    return (
        f"FailedEvent({row.exception_class}: {row.exception_message[:200]!r}, "
        f"body={bytes(row.body or b'')[:120]!r}, {row.body_size} bytes, headers={str(row.headers)[:200]})"
    )


def parked_messages(broker_url: str) -> list[str]:
    """What the parked queue holds and why (read, then returned to the queue unacknowledged)."""
    shown = []
    with Connection(broker_url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(PARKED, no_ack=False)) is not None and len(shown) < 50:
            headers = message.headers or {}
            reasons = {k: str(v)[:300] for k, v in headers.items() if str(k).startswith("marketplace-park")}
            shown.append(
                f"{reasons} routing key {message.delivery_info.get('routing_key')!r} body {message.body[:80]!r}"
            )
        channel.close()
    return shown


def drained(**state) -> list[str]:
    """Wait until nothing is left to happen (or DRAIN_SECONDS pass); what is still wrong then."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        # The queues last, once all else is as it should be: each look at them is a rabbitmqctl run
        # (0.7 s of CPU), and while retries are pending the records already say "not yet".
        found = violations(**state, look_at_queues=False) or violations(**state)
        if not found:
            time.sleep(1.5)  # and nothing more arrives: no second record, no late loop
            return violations(**state)
        if time.monotonic() > deadline:
            return violations(**state)  # the whole report, queues included
        time.sleep(1.0)


def check_health_and_metrics(client, broker_url: str) -> list[str]:
    found = []
    health = client.get("/healthz")
    if health.status_code != 200 or health.json().get("status") != "ok":
        found.append(f"/healthz: {health.status_code} {health.content[:1000]!r}")
    auth = "Basic " + base64.b64encode(METRICS_CREDENTIALS.encode()).decode()
    response = client.get("/metrics", HTTP_AUTHORIZATION=auth)
    if response.status_code != 200:
        return [*found, f"/metrics: {response.status_code}"]
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (sample.name, sample.labels.get("subscriber")): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    depths = queue_depths(broker_url)
    open_failures = Counter(FailedEvent.objects.filter(status__in=OPEN).values_list("subscriber", flat=True))
    for subscriber in SUBSCRIBERS:
        shown = samples.get(("marketplace_dead_letter_queue_messages", subscriber.name))
        if shown != depths.get(subscriber.dead_letter_queue_name, (None,))[0]:
            found.append(f"/metrics: dead-letter queue of {subscriber.name} shown as {shown}")
        shown = samples.get(("marketplace_failed_events_open", subscriber.name))
        if shown != open_failures[subscriber.name]:
            found.append(
                f"/metrics: open failed events of {subscriber.name} shown as {shown}, "
                f"want {open_failures[subscriber.name]}"
            )
    return found


# --- the test ---------------------------------------------------------------------------------------


def run_batch(*, batch, order_count, workers, recorder, shop, place_order, broker_url, faults, client):
    purge_everything(broker_url)
    FailedEvent.objects.all().delete()
    processes = {f"worker {name}": worker for name, worker in workers.items()} | {"recorder": recorder}
    for process in processes.values():
        assert process.process.poll() is None, f"{process.log_path} exited before the batch"
    log_offsets = {name: len(p.log_path.read_text(errors="replace")) for name, p in processes.items()}

    # Orders before, between and after the hostile messages.
    orders = []
    cuts = [round(len(batch) * (i + 1) / (order_count + 1)) for i in range(order_count)]
    refused, start = {}, 0
    for cut in cuts:
        refused |= publish_batch(broker_url, batch, range(start, cut))
        order, envelope = place_order(shop.buyer, (shop.product, 1))
        orders.append({"id": order["id"], "event_id": envelope["id"]})
        start = cut
    refused |= publish_batch(broker_url, batch, range(start, len(batch)))
    published = [item if index not in refused else None for index, item in enumerate(batch)]

    expected = Expectation.of(published)
    found = drained(
        expected=expected,
        orders=orders,
        faults=faults,
        broker_url=broker_url,
        processes=processes,
        log_offsets=log_offsets,
    )
    found += check_health_and_metrics(client, broker_url)
    report = "\n".join(["the system did not absorb a hostile batch:", *found, "refused:", *refused.values()])
    if found:  # the whole report, however long, for whoever reads the failure (gitignored)
        (ROOT / ".hypothesis" / "hostile-live-failure.txt").write_text(report)
    assert not found, report


BATCH = st.lists(st.tuples(hostile.messages(max_body=1024 * 1024, live=True), destinations()), min_size=10, max_size=20)


CONFIRMATION = topology.subscriber_named("order_confirmation")
# What the generated batches found, as one batch (each line a class of message):
REGRESSIONS = [
    # The same bytes, one utf-16 and one utf-8, through a worker that dead-letters them (a "task"
    # header that is a table: Celery's consumer raises TypeError): the worker re-encoded the utf-16
    # body with a BOM, so the record was not the bytes sent and the pair got two FailedEvents.
    (hostile.HostileMessage(body=b"-0", content_encoding="utf-16", headers={"task": {"t": 1}}), Destination("fanout")),
    (hostile.HostileMessage(body=b"-0", content_encoding="utf-8", headers={"task": {"t": 1}}), Destination("fanout")),
    # An event of a type only loyalty_rewards handles, whose header frame no reader can decode (a
    # table deeper than the recursion limit): its content type is lost with it, so it is recorded.
    (
        hostile.HostileMessage(
            body=b'{"id": "%s", "type": "customer.segment_changed"}' % str(uuid.uuid4()).encode(),
            content_encoding="not-a-codec",
            headers={"t": hostile.deep_table(1_500)},
        ),
        Destination("fanout"),
    ),
    # 10**5 levels of JSON (RecursionError, not ValueError) to the recorder and to a worker.
    (hostile.HostileMessage(body=b"[" * 100_000 + b"]" * 100_000), Destination("dead-letter-exchange", CONFIRMATION)),
    (hostile.HostileMessage(body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000), Destination("queue", CONFIRMATION)),
    # Nobody's dead letter: parked, once.
    (hostile.HostileMessage(body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000), Destination("recorder-inbox")),
    # Straight into a dead-letter queue: recorded by the recorder's pass over it.
    (hostile.HostileMessage(body=b"{}", headers={"x-death": [1]}), Destination("dead-queue", CONFIRMATION)),
]


@pytest.mark.long
@LIVE
@given(batch=BATCH, order_count=st.integers(1, 2))
@example(batch=REGRESSIONS, order_count=1)
@pytest.mark.timeout(600)
def test_hostile_messages_anywhere_are_recorded_once_and_stop_nothing(live_batch, batch, order_count):
    live_batch(batch=batch, order_count=order_count)


@pytest.mark.slow
@LIVE_LONG
@given(
    batch=st.lists(
        st.tuples(hostile.messages(max_body=8 * 1024 * 1024, live=True), destinations()), min_size=10, max_size=40
    ),
    order_count=st.integers(1, 4),
)
@pytest.mark.timeout(7200)
def test_hostile_messages_anywhere_long_run(live_batch, batch, order_count):
    live_batch(batch=batch, order_count=order_count)


@pytest.fixture
def live_batch(workers, recorder, shop, place_order, broker_url, faults, client, settings):
    """``live_batch(batch=..., order_count=...)``: run_batch against this test's live system."""
    settings.METRICS_BASIC_AUTH = METRICS_CREDENTIALS
    return functools.partial(
        run_batch,
        workers=workers,
        recorder=recorder,
        shop=shop,
        place_order=place_order,
        broker_url=broker_url,
        faults=faults,
        client=client,
    )


@pytest.mark.timeout(120)
def test_a_dead_letter_delivered_while_the_recorder_compacts_is_recorded_not_held(
    start_recorder, transactional_db, broker_url
):
    """Found by the batch above: the recorder takes deliveries into a buffer whenever py-amqp reads
    frames, also during a compaction pass over a dead-letter queue; one that arrived then was held,
    unacknowledged and unrecorded, until some other dead letter arrived (on a quiet system, never)."""
    purge_everything(broker_url)
    FailedEvent.objects.all().delete()
    recorder = start_recorder()
    try:
        busy = topology.subscriber_named("seller_notification")
        # Unrecorded messages straight in a dead-letter queue: the next pass records each, for a while.
        with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.default_channel)
            for index in range(300):
                producer.publish(
                    b"%d" % index + b"x" * 65_536,
                    exchange="",
                    routing_key=busy.dead_letter_queue_name,
                    serializer=None,
                )
        deadline = time.monotonic() + 30
        while "holds a dead letter with no record" not in recorder.log_text():
            assert time.monotonic() < deadline, f"no compaction pass started:\n{recorder.log_text()[-2000:]}"
            time.sleep(0.05)
        probe = b'{"id": "%s"}' % str(uuid.uuid4()).encode()
        with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
            Producer(conn.default_channel).publish(
                probe,
                exchange=topology.DEAD_LETTER_EXCHANGE.name,
                routing_key=CONFIRMATION.dead_letter_queue_name,
                serializer=None,
                content_type="application/json",
                content_encoding="utf-8",
            )

        deadline = time.monotonic() + 20  # the pass itself takes a few seconds
        while True:
            inbox = queue_depths(broker_url).get(topology.RECORDER_QUEUE_NAME)
            recorded = FailedEvent.objects.filter(subscriber=CONFIRMATION.name).exists()
            if recorded and inbox == (0, 0):
                break
            assert time.monotonic() < deadline, (
                f"the probe is still not recorded (inbox ready/unacknowledged: {inbox}, recorded: {recorded}):\n"
                f"{recorder.log_text()[-2000:]}"
            )
            time.sleep(0.5)
        assert recorder.alive()
    finally:
        recorder.stop()
        purge_everything(broker_url)
