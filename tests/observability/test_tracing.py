"""One order, one trace, across every process (docs/observability.md#traces).

The system's processes are started from the Procfile by the fault ledger's harness (web, relay,
recorder, one worker per subscriber), with tracing on and exporting OTLP/HTTP to a receiver of the
test's own (tests/support/otlp.py); the mail server and the seller's webhook are fakes at the edge.
Orders go through the HTTP API, and the spans received must make one trace whose parent/child
links hold, from the request through the publish and every subscriber to the webhook and the
emails, a retry and a dead letter included; a replay makes a new trace linked to the old one.

The web's own broker is unreachable, so its on-commit publish fails and the relay publishes every
order's event: both publishes are in the trace, and so is the on-commit publish of the worker that
emits customer.segment_changed. The unit tests at the end run in this process, where tracing is off.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kombu import Connection

from marketplace import tracing
from marketplace.events import broker, topology
from marketplace.events import tracing as event_tracing
from marketplace.events.envelope import build_envelope
from marketplace.events.models import FailedEvent, OutboxEvent, ProcessedEvent
from marketplace.events.trace import tracing_ui_url
from tests.factories import BuyerFactory, ProductFactory, SellerFactory, token_for
from tests.faults.harness.edges import SmtpSink
from tests.faults.harness.servers import free_port
from tests.faults.harness.system import System
from tests.support.broker import purge_subscriber_queues, queue_depth
from tests.support.otlp import OtlpReceiver, Span
from tests.support.waiting import eventually
from tests.support.workers import TEST_RETRY_ENV

ORDER_SUBSCRIBERS = ("order_confirmation", "seller_notification", "customer_segmentation")
WORKERS = tuple(subscriber.name for subscriber in topology.SUBSCRIBERS)
EXPORT_EVERY_MS = "100"  # OTEL_BSP_SCHEDULE_DELAY: spans reach the receiver within a tenth of a second


# --- the system, traced ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def otlp():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def smtp():
    sink = SmtpSink(free_port()).start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def traced_system(worker_env, broker_url, otlp, smtp, tmp_path_factory):
    """web, relay, recorder and a worker per subscriber, the Procfile's commands with one process
    each, on the test database and vhost; tracing on, through the standard variables only."""
    system = System(
        workdir=tmp_path_factory.mktemp("traced-system"),
        database_url=worker_env["DATABASE_URL"],
        broker_url=broker_url,
        management_url=settings.RABBITMQ_MANAGEMENT_URL,
        smtp_port=smtp.port,
        web_port=free_port(),
    )
    system.env.update(
        TEST_RETRY_ENV,
        DATABASE_CONN_MAX_AGE="0",
        # A buyer's first order makes them high value: customer.segment_changed, and a reward email.
        SEGMENT_HIGH_VALUE_SPEND="1.00",
        OTEL_SDK_DISABLED="false",  # tests/settings.py turns it off for every other process
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
        OTEL_BSP_SCHEDULE_DELAY=EXPORT_EVERY_MS,
        DEAD_LETTER_COMPACT_SECONDS="0.5",
    )
    purge_subscriber_queues(broker_url)  # what earlier tests published, for workers long gone
    refused = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    for name in ("web", "relay", "recorder", *WORKERS):
        command = (
            system.commands[name].replace("--concurrency 2", "--concurrency 1").replace("--workers 2", "--workers 1")
        )
        system.start(name, command=command, wait=False, env={"BROKER_URL": refused} if name == "web" else None)
    for proc in system.procs.values():
        system.wait_ready(proc)
    yield system
    system.close()
    purge_subscriber_queues(broker_url)  # the inbox too: later tests record dead letters themselves


@pytest.fixture
def shop(transactional_db, seller_webhook):
    """A buyer with an API token, and a product of a seller notified by webhook (10.00, in stock)."""
    buyer = BuyerFactory()
    seller = SellerFactory(webhook_url=seller_webhook.url)
    return {"buyer": buyer, "token": token_for(buyer), "product": ProductFactory(seller=seller, stock=5)}


def place_order(system: System, shop: dict, **headers: str) -> OutboxEvent:
    response = httpx.post(
        f"http://127.0.0.1:{system.web_port}/api/orders/",
        json={"lines": [{"product": shop["product"].pk, "quantity": 1}]},
        headers={"Authorization": f"Token {shop['token']}", **headers},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return OutboxEvent.objects.get(event_type="order.placed", envelope__data__order_id=response.json()["id"])


def dead_letters_waiting(broker_url: str, subscriber: str) -> int:
    with Connection(broker_url) as conn:
        return queue_depth(conn, topology.subscriber_named(subscriber).dead_letter_queue_name)


def done(subscriber: str, event: OutboxEvent) -> bool:
    return ProcessedEvent.objects.filter(subscriber=subscriber, event_id=event.event_id).exists()


def one(spans: list[Span], **wanted) -> Span:
    found = matching(spans, **wanted)
    assert len(found) == 1, f"{wanted}: {found}\nin {spans}"
    return found[0]


def matching(spans: list[Span], **wanted) -> list[Span]:
    return sorted(
        (span for span in spans if all(getattr(span, key) == value for key, value in wanted.items())),
        key=lambda span: span.start_ns,
    )


def children(spans: list[Span], parent: Span, **wanted) -> list[Span]:
    return [span for span in matching(spans, **wanted) if span.parent_id == parent.span_id]


def whole(spans: list[Span]) -> bool:
    """Every span's parent is in the trace: nothing is still buffered in a process."""
    ids = {span.span_id for span in spans}
    return all(not span.parent_id or span.parent_id in ids for span in spans)


def span_of(traceparent: str) -> tuple[str, str]:
    """The (trace id, span id) a W3C traceparent names."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def ids(span: Span) -> tuple[str, str]:
    return span.trace_id, span.span_id


def assert_messaging(span: Span, *, operation: str, destination: str, event: dict) -> None:
    assert span.attributes["messaging.system"] == "rabbitmq"
    assert span.attributes["messaging.operation.type"] == operation
    assert span.attributes["messaging.destination.name"] == destination
    assert span.attributes["messaging.message.id"] == event["id"]
    assert span.attributes["messaging.message.conversation_id"] == event["correlation_id"]


# --- across the processes ----------------------------------------------------------------------


@pytest.mark.xdist_group("traced_system")  # bin/test: both on one process, so the system boots once
def test_one_order_is_one_trace_across_every_process(traced_system, otlp, smtp, shop, seller_webhook):
    seller_webhook.statuses = [503]  # the seller's endpoint fails once: seller_notification retries
    event = place_order(traced_system, shop)
    trace_id = tracing.trace_id_of(event.envelope)
    assert trace_id, event.envelope

    changed = eventually(lambda: OutboxEvent.objects.filter(event_type="customer.segment_changed").first(), timeout=30)
    eventually(
        lambda: all(done(name, event) for name in ORDER_SUBSCRIBERS) and done("loyalty_rewards", changed),
        timeout=30,
        message="every subscriber to handle the order and the segment change",
    )
    expected = [
        ("marketplace-web", "SERVER"),
        ("marketplace-relay", "PRODUCER"),
        *[(f"marketplace-{name}", "CONSUMER") for name in WORKERS],
    ]

    def complete():
        spans = otlp.trace(trace_id)
        kinds = {(span.service, span.kind) for span in spans}
        processed = matching(spans, name="process marketplace.seller_notification")
        return spans if all(e in kinds for e in expected) and len(processed) == 2 and whole(spans) else None

    spans = eventually(complete, timeout=30, message="the order's whole trace to be exported")

    # The request is the root; the event records it, and the database queries are its children.
    request = one(spans, service="marketplace-web", kind="SERVER")
    assert request.parent_id == ""
    assert request.name == "POST api/orders/"
    assert span_of(event.envelope["traceparent"]) == ids(request)
    assert children(spans, request, kind="CLIENT"), "the request's SQL statements (psycopg)"
    assert all(span.attributes.get("db.system") == "postgresql" for span in children(spans, request, kind="CLIENT"))

    # The request's own publish failed (no broker); the relay published the event, in the same trace.
    failed_publish = one(spans, service="marketplace-web", name="publish marketplace.events")
    assert failed_publish.parent_id == request.span_id
    assert failed_publish.status == "ERROR"
    publish = one(spans, service="marketplace-relay", name="publish marketplace.events")
    assert publish.parent_id == request.span_id
    assert publish.kind == "PRODUCER"
    assert publish.status != "ERROR"
    assert_messaging(publish, operation="send", destination="marketplace.events", event=event.envelope)

    # Every subscriber handles the publish; the buyer's email carries the span that sent it.
    handled = {}
    for name in ORDER_SUBSCRIBERS:
        handled[name] = matching(spans, service=f"marketplace-{name}", name=f"process marketplace.{name}")
        first = handled[name][0]
        assert first.parent_id == publish.span_id, name
        assert first.kind == "CONSUMER"
        assert first.attributes["messaging.consumer.group.name"] == name
        assert first.attributes["messaging.destination.subscription.name"] == f"marketplace.{name}"
        assert_messaging(first, operation="process", destination="marketplace.events", event=event.envelope)
    send = one(children(spans, handled["order_confirmation"][0]), name="send email")
    confirmation = next(d for d in smtp.snapshot() if d.event_id == event.envelope["id"])
    assert span_of(confirmation.headers["traceparent"]) == ids(send)

    # The webhook failed once (503): the handling failed, published its retry, and the retry's
    # handling continues from that publish. Each webhook call carries its own client span.
    attempt, retried = handled["seller_notification"]
    assert attempt.status == "ERROR"
    assert retried.status != "ERROR"
    retry = one(children(spans, attempt), kind="PRODUCER")
    assert retry.name == "publish marketplace.seller_notification.retry.1s"
    assert retry.attributes["messaging.destination.name"] == ""  # the default exchange
    assert retried.parent_id == retry.span_id
    assert retried.attributes["marketplace.retries"] == 1
    calls = [one(children(spans, handling), kind="CLIENT", name="POST") for handling in (attempt, retried)]
    assert [request["status"] for request in seller_webhook.requests] == [503, 200]
    assert [span_of(request["headers"]["traceparent"]) for request in seller_webhook.requests] == [
        ids(call) for call in calls
    ]

    # Segmentation emits customer.segment_changed in the trace of the event that caused it: its
    # worker publishes it on commit, and loyalty_rewards' handling and reward email follow.
    segmentation = handled["customer_segmentation"][0]
    assert span_of(changed.envelope["traceparent"]) == ids(segmentation)
    emitted = one(children(spans, segmentation), name="publish marketplace.events")
    assert_messaging(emitted, operation="send", destination="marketplace.events", event=changed.envelope)
    rewarding = one(spans, service="marketplace-loyalty_rewards", kind="CONSUMER")
    assert rewarding.parent_id == emitted.span_id
    reward_email = one(children(spans, rewarding), name="send email")
    reward = next(d for d in smtp.snapshot() if d.event_id == changed.envelope["id"])
    assert span_of(reward.headers["traceparent"]) == ids(reward_email)

    # Log lines of that work carry its trace and span ids.
    log = traced_system.procs["order_confirmation"].log_text()
    assert f"trace_id={trace_id} span_id=" in log


@pytest.mark.xdist_group("traced_system")
def test_a_dead_letter_stays_in_its_trace_and_a_replay_is_a_new_trace_linked_to_it(
    traced_system, otlp, shop, seller_webhook, broker_url
):
    seller_webhook.default_status = 400  # the seller refuses: dead-lettered at once (permanent)
    event = place_order(traced_system, shop)
    old_trace = tracing.trace_id_of(event.envelope)
    failed = eventually(
        lambda: FailedEvent.objects.filter(subscriber="seller_notification", event_id=event.event_id).first(),
        timeout=30,
        message="the recorder to record the dead letter",
    )

    def dead_lettered():
        spans = otlp.trace(old_trace)
        return spans if matching(spans, service="marketplace-recorder") and whole(spans) else None

    spans = eventually(dead_lettered, timeout=30, message="the dead letter's spans")
    handling = one(spans, name="process marketplace.seller_notification")
    assert handling.status == "ERROR"
    assert "notifications.handlers.SellerWebhookRejected" in handling.exception_types
    dead_letter = one(children(spans, handling), kind="PRODUCER")
    assert dead_letter.name == "publish marketplace.dead-letter"
    assert (
        dead_letter.attributes["messaging.rabbitmq.destination.routing_key"] == "marketplace.seller_notification.dead"
    )
    recorded = one(spans, service="marketplace-recorder", kind="CONSUMER")
    assert recorded.parent_id == dead_letter.span_id
    assert span_of(failed.headers["traceparent"]) == ids(dead_letter)

    seller_webhook.default_status = 200
    traced_system.manage("replay_failed_events", "--id", str(failed.pk))
    eventually(
        lambda: FailedEvent.objects.get(pk=failed.pk).status == FailedEvent.Status.RESOLVED,
        timeout=30,
        message="the replay to succeed",
    )

    def replayed():
        replays = matching(otlp.spans(), service="marketplace-replay")
        if not replays:
            return None
        spans = otlp.trace(replays[0].trace_id)
        return spans if len(matching(spans, kind="CONSUMER")) == 1 and whole(spans) else None

    spans = eventually(replayed, timeout=30, message="the replay's trace")
    replay = one(spans, service="marketplace-replay", kind="PRODUCER")
    assert replay.trace_id != old_trace
    assert replay.parent_id == ""
    assert [(link.trace_id, link.span_id) for link in replay.links] == [(old_trace, dead_letter.span_id)]
    assert replay.attributes["marketplace.replay_of"] == failed.pk
    handling = one(spans, name="process marketplace.seller_notification")
    assert handling.parent_id == replay.span_id
    assert handling.attributes["marketplace.replay_of"] == str(failed.pk)
    assert [link.trace_id for link in handling.links] == [old_trace]  # the event's origin: the request
    call = one(children(spans, handling), kind="CLIENT", name="POST")
    assert span_of(seller_webhook.requests[-1]["headers"]["traceparent"]) == ids(call)
    # Resolved, the failure leaves its dead-letter queue (else the recorder would record it again
    # once this test's data is gone).
    eventually(
        lambda: dead_letters_waiting(broker_url, "seller_notification") == 0,
        message="the recorder to remove the resolved dead letter",
    )


@pytest.mark.xdist_group("traced_system")
def test_an_order_its_caller_left_unsampled_passes_the_trace_on_and_records_nothing(
    traced_system, otlp, smtp, shop, seller_webhook
):
    # The caller's trace was not sampled (flags 00): with the SDK's parent-based sampler no process
    # records a span of it, and each passes the same trace on, still flagged not sampled.
    unsampled = "00-6d61726b6574706c6163652d74726163-00f067aa0ba902b7-00"
    trace_id = span_of(unsampled)[0]
    event = place_order(traced_system, shop, traceparent=unsampled)
    changed = eventually(lambda: OutboxEvent.objects.filter(event_type="customer.segment_changed").first(), timeout=30)
    eventually(
        lambda: all(done(name, event) for name in ORDER_SUBSCRIBERS) and done("loyalty_rewards", changed),
        timeout=30,
        message="every subscriber to handle the order and the segment change",
    )

    for carrier in (event.envelope, changed.envelope):  # the event, and the one its handling emitted
        assert tracing.trace_id_of(carrier) == trace_id
        assert carrier["traceparent"].endswith("-00")
    emails = [d for d in smtp.snapshot() if d.event_id in (event.envelope["id"], changed.envelope["id"])]
    assert len(emails) == 2  # the confirmation and the reward
    assert all(span_of(email.headers["traceparent"])[0] == trace_id for email in emails)
    assert all(email.headers["traceparent"].endswith("-00") for email in emails)

    # A sampled order after it: once its handling is exported by every worker, so would anything of
    # the first order's have been.
    later = place_order(traced_system, shop)
    later_trace = tracing.trace_id_of(later.envelope)
    eventually(
        lambda: (
            {f"marketplace-{name}" for name in ORDER_SUBSCRIBERS} <= {span.service for span in otlp.trace(later_trace)}
        ),
        timeout=30,
        message="the sampled order's spans",
    )
    assert otlp.trace(trace_id) == []


# --- in this process: tracing off --------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, False),
        ({"OTEL_SDK_DISABLED": "True", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, True),
        ({"OTEL_SERVICE_NAME": "marketplace", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ],
)
def test_tracing_is_on_only_when_an_exporter_or_an_endpoint_is_named(environ, on):
    assert tracing.wanted(environ) is on


def test_tracing_off_installs_nothing(db, monkeypatch):
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    record_factory = logging.getLogRecordFactory()
    middleware = list(settings.MIDDLEWARE)
    modules = set(sys.modules)

    assert tracing.configure(tracing.WEB) is False

    assert tracing.enabled is False
    assert not [name for name in set(sys.modules) - modules if name.startswith("opentelemetry")]
    assert not hasattr(psycopg.connect, "__wrapped__")
    assert not hasattr(httpx.HTTPTransport.handle_request, "__wrapped__")
    assert logging.getLogRecordFactory() is record_factory
    assert list(settings.MIDDLEWARE) == middleware
    # ... and the event bus's hot paths carry no trace context and open no span.
    envelope = build_envelope(
        event_type="order.placed", version=1, data={}, occurred_at=datetime.now(UTC), correlation_id="c"
    )
    assert not {"traceparent", "tracestate"} & set(envelope)
    assert not {"traceparent", "tracestate"} & set(broker.event_message(envelope)[1]["headers"])
    subscriber = topology.subscriber_named("order_confirmation")
    assert event_tracing.processing(subscriber=subscriber, request=None, envelope=envelope) is tracing.NOT_TRACED


def test_log_lines_carry_the_trace_and_span_ids_inside_a_traced_operation():
    formatter = logging.Formatter(settings.LOGGING["formatters"]["plain"]["format"])
    trace_ids = tracing.LogTraceIds()
    outside = logging.LogRecord("orders", logging.INFO, __file__, 1, "order %s placed", (7,), None)
    assert trace_ids.filter(outside)
    assert formatter.format(outside).endswith(" INFO orders order 7 placed")
    inside = logging.LogRecord("orders", logging.INFO, __file__, 1, "order %s placed", (7,), None)
    inside.otelTraceID, inside.otelSpanID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    trace_ids.filter(inside)
    assert formatter.format(inside).endswith(
        " INFO orders trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 order 7 placed"
    )


def test_the_admin_trace_view_links_the_event_trace_in_the_tracing_ui(admin_client, settings):
    envelope = build_envelope(
        event_type="order.placed",
        version=1,
        data={"order_id": 1},
        occurred_at=datetime.now(UTC),
        correlation_id="c",
    )
    envelope["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = OutboxEvent.objects.create(event_id=envelope["id"], event_type="order.placed", envelope=envelope)
    page = f"/admin/events/outboxevent/trace/event/{event.event_id}/"

    settings.TRACING_UI_URL = ""
    assert "trace-ui" not in admin_client.get(page).content.decode()
    settings.TRACING_UI_URL = "http://127.0.0.1:16686/trace/{trace_id}"
    assert (
        'href="http://127.0.0.1:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"'
        in admin_client.get(page).content.decode()
    )
    del envelope["traceparent"]
    assert tracing_ui_url(envelope) == ""


traceparents = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"\A[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]*)?\Z"),
    st.binary(max_size=40),
    st.integers(),
    st.none(),
)
carriers = st.one_of(
    st.dictionaries(st.sampled_from(["traceparent", "tracestate", "baggage", "id", "type"]), traceparents),
    st.lists(st.text(max_size=5), max_size=3),
    st.text(max_size=20),
    st.none(),
)


class _Request:
    """What a Celery task request holds of a delivery: its headers as attributes, and delivery info."""

    def __init__(self, headers, delivery_info, retries):
        self.__dict__.update({k: v for k, v in headers.items() if isinstance(k, str)})
        self.delivery_info, self.retries, self.args = delivery_info, retries, []


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    envelope=carriers,
    headers=st.dictionaries(
        st.sampled_from(["traceparent", "tracestate", "baggage", "marketplace-replay-of"]), traceparents
    ),
    delivery_info=st.one_of(st.none(), st.dictionaries(st.sampled_from(["exchange", "routing_key"]), traceparents)),
    retries=st.one_of(st.none(), st.integers(0, 10)),
)
def test_any_trace_context_a_message_carries_is_read_without_failing(envelope, headers, delivery_info, retries):
    """Envelopes and headers are untrusted bytes: a malformed trace context starts a trace of its
    own and never fails the handling (the SDK is not set up here: the API's no-op tracer runs)."""
    trace_id = tracing.trace_id_of(envelope)
    assert trace_id is None or (len(trace_id) == 32 and int(trace_id, 16))
    tracing.w3c_context(envelope)
    subscriber = topology.subscriber_named("order_confirmation")
    with event_tracing._process_span(subscriber, _Request(headers, delivery_info, retries), envelope):
        pass
    message = type("Message", (), {"headers": headers, "delivery_info": delivery_info, "properties": {}})()
    with event_tracing._recording_spans([message]):
        pass


def test_no_instrumentation_runs_inside_an_operation_the_sampler_left_out(monkeypatch):
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # tests/settings.py: the SDK would make no-op spans
    from opentelemetry import trace
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    def inside(sampler) -> bool:
        tracer = TracerProvider(sampler=sampler).get_tracer(__name__)
        with tracer.start_as_current_span("operation") as span, tracing.quiet_if_unsampled(span):
            return is_instrumentation_enabled()

    assert inside(ALWAYS_ON) is True
    assert inside(ALWAYS_OFF) is False
    assert is_instrumentation_enabled()

    # A request the sampler left out: the Django instrumentation's hooks open and close the quiet.
    request = HttpRequest()
    tracing._quiet_unsampled_request(trace.INVALID_SPAN, request)
    assert is_instrumentation_enabled() is False
    tracing._end_of_request(trace.INVALID_SPAN, request, HttpResponse())
    assert is_instrumentation_enabled()


def test_an_operation_under_a_parent_left_out_is_left_out_without_asking_the_sdk(monkeypatch):
    from opentelemetry import propagate
    from opentelemetry.context import Context
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    unsampled = tracing.w3c_context({"traceparent": "00-6d61726b6574706c6163652d74726163-00f067aa0ba902b7-00"})
    sampled = tracing.w3c_context({"traceparent": "00-6d61726b6574706c6163652d74726163-00f067aa0ba902b7-01"})

    monkeypatch.setattr(tracing, "_parent_decides", True)  # configure(): the SDK's default, parent-based
    assert tracing.left_out(unsampled) is True
    assert tracing.left_out(sampled) is False
    assert tracing.left_out(Context()) is False  # a root: the sampler decides
    with tracing.passing_on(unsampled):
        assert tracing.left_out() is True  # what runs inside is left out too, and uninstrumented
        assert is_instrumentation_enabled() is False
        carried: dict[str, str] = {}
        propagate.inject(carried)
        assert carried == {"traceparent": "00-6d61726b6574706c6163652d74726163-00f067aa0ba902b7-00"}  # passed on
    assert is_instrumentation_enabled()

    monkeypatch.setattr(tracing, "_parent_decides", False)  # traceidratio alone: a child may be sampled
    assert tracing.left_out(unsampled) is False


def test_a_query_or_call_outside_any_operation_makes_no_span(monkeypatch):
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # tests/settings.py: the SDK would make no-op spans
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    instrumentation = tracing._joining(provider).get_tracer("psycopg")  # what configure() hands it

    with instrumentation.start_as_current_span("SELECT") as outside:
        assert outside is trace.INVALID_SPAN
    assert instrumentation.start_span("POST") is trace.INVALID_SPAN
    operation = provider.get_tracer(__name__)
    with (
        operation.start_as_current_span("process marketplace.order_confirmation"),
        instrumentation.start_as_current_span("SELECT") as inside,
    ):
        assert inside.is_recording()

    assert [span.name for span in exported.get_finished_spans()] == ["SELECT", "process marketplace.order_confirmation"]
