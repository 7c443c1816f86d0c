"""The event bus's spans: a publish, a subscriber's handling, its retries and dead letters, a
replay, the recorder. How the trace context travels: docs/observability.md#traces.

No instrumentation covers this path (raw events adopted into Celery tasks, retries through TTL
queues, dead letters): these are thin spans of our own, with the messaging semantic conventions,
around what the instrumentations record inside them (psycopg, httpx).

- An event records the context of the operation that created it (its ``traceparent`` and
  ``tracestate`` extension attributes, marketplace/events/envelope.py); its publish, by the
  request's publisher thread or by the relay, is a span in that trace.
- A message carries the context of the span that published it in its ``traceparent`` (and
  ``tracestate``) headers. The adoption keeps a raw event's headers on the task message
  (marketplace/events/consumer.py), so the subscriber's handling continues the publish; a message
  without those headers continues the event's own context.
- A retry and a dead letter are published inside the handling, so they stay in its trace.
- A replay is a new trace (the operator's request, or a root of its own) with a link to the old one.

With tracing off every function returns at once, handing on whatever trace headers the message
already carries, so a traced chain passes through an untraced process unbroken. With it on, a span
the sampler left out gets no attributes, and a handling it left out runs with the instrumentations
suppressed (tracing.quiet_if_unsampled). Under a parent already left out (most orders, in
production) no span is made: the parent's context is passed on as it came (tracing.left_out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

from marketplace import tracing
from marketplace.events import headers as message_headers
from marketplace.events import topology
from marketplace.internals import celery as internal_celery

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

SYSTEM = "rabbitmq"
# Trace headers a task message may carry (W3C, and baggage when OTEL_PROPAGATORS adds it).
PROPAGATED_HEADERS = (*tracing.W3C_FIELDS, "baggage")


def publishing(
    envelope: dict[str, Any], *, exchange: str, routing_key: str = ""
) -> AbstractContextManager[dict[str, str]]:
    """A producer span around publishing ``envelope``, in the trace the event records; yields the
    trace headers its message carries (off: the event's own context)."""
    if not tracing.enabled:
        return nullcontext(tracing.w3c_fields(envelope))
    return _span(
        f"publish {exchange or routing_key}",
        kind="PRODUCER",
        parent=tracing.w3c_context(envelope),
        attributes=partial(_message_attributes, envelope, exchange=exchange, routing_key=routing_key, operation="send"),
    )


def republishing(*, request: Any, exchange: str, routing_key: str) -> AbstractContextManager[dict[str, str]]:
    """A producer span, inside the handling, around publishing the task's message again (a retry,
    a dead letter); yields its trace headers (off: those the message came with)."""
    if not tracing.enabled:
        return nullcontext(carried_headers(request))
    envelope = request.args[0] if request.args else None
    return _span(
        f"publish {exchange or routing_key}",
        kind="PRODUCER",
        parent=None,
        attributes=partial(_message_attributes, envelope, exchange=exchange, routing_key=routing_key, operation="send"),
    )


def replaying(*, failed_event: Any, queue: str) -> AbstractContextManager[dict[str, str]]:
    """A producer span around a replay's publish, in the current trace (the operator's request) or
    a new one, linked to the trace the event failed in; yields its trace headers (off: none)."""
    if not tracing.enabled:
        return nullcontext({})
    from opentelemetry import trace

    old = trace.get_current_span(tracing.w3c_context(failed_event.headers)).get_span_context()
    if not old.is_valid:
        old = trace.get_current_span(tracing.w3c_context(failed_event.payload)).get_span_context()

    def attributes() -> dict[str, Any]:
        found = _message_attributes(failed_event.payload, exchange="", routing_key=queue, operation="send")
        found["marketplace.replay_of"] = failed_event.pk
        return found

    return _span(
        f"publish {queue}",
        kind="PRODUCER",
        parent=None,
        attributes=attributes,
        links=[trace.Link(old, {"marketplace.link": "failed"})] if old.is_valid else [],
    )


def processing(*, subscriber: topology.Subscriber, request: Any, envelope: Any) -> AbstractContextManager[None]:
    """The consumer span of a subscriber's handling of one delivery (its task). Its parent is the
    span that published the message (its trace headers), else the context the event records; a
    replay without trace headers starts a trace of its own. Whenever the event's own trace is not
    the parent's, the span links to it."""
    if not tracing.enabled:
        return tracing.NOT_TRACED
    return _process_span(subscriber, request, envelope)


@contextmanager
def _process_span(subscriber: topology.Subscriber, request: Any, envelope: Any) -> Iterator[None]:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context

    origin = None
    carried = carried_headers(request)
    if carried:
        parent = propagate.extract(carried, context=Context())
    elif internal_celery.request_header(request, message_headers.REPLAY_OF):
        parent = Context()
    else:
        parent = origin = tracing.w3c_context(envelope)
    if tracing.left_out(parent):
        with tracing.passing_on(parent):
            yield
        return
    if origin is None:
        origin = tracing.w3c_context(envelope)
    origin_span = trace.get_current_span(origin).get_span_context()
    parent_span = trace.get_current_span(parent).get_span_context()
    links = []
    if origin_span.is_valid and origin_span.trace_id != parent_span.trace_id:
        links.append(trace.Link(origin_span, {"marketplace.link": "event origin"}))
    with tracing.tracer(__name__).start_as_current_span(
        f"process {subscriber.queue_name}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        # SubscriberTask.handle records the handler's failure (failed()); what it raises then
        # (a Retry, a Reject) is how Celery settles the message, not another failure.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            span.set_attributes(_process_attributes(subscriber, request, envelope))
        with tracing.quiet_if_unsampled(span):
            yield


def _process_attributes(subscriber: topology.Subscriber, request: Any, envelope: Any) -> dict[str, Any]:
    delivery = request.delivery_info or {}
    attributes = _message_attributes(
        envelope,
        exchange=str(delivery.get("exchange") or ""),
        routing_key=str(delivery.get("routing_key") or ""),
        operation="process",
    )
    attributes |= {
        "messaging.destination.subscription.name": subscriber.queue_name,
        "messaging.consumer.group.name": subscriber.name,
        "marketplace.retries": request.retries or 0,
    }
    replay_of = internal_celery.request_header(request, message_headers.REPLAY_OF)
    if replay_of:
        attributes["marketplace.replay_of"] = str(replay_of)
    return attributes


def failed(exc: BaseException) -> None:
    """Mark the current handling span failed with the handler's exception."""
    if not tracing.enabled:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))


def recording(messages: list[Any]) -> AbstractContextManager[None]:
    """One consumer span per dead letter the recorder records, each in the trace its headers carry,
    lasting until the burst they came in is recorded."""
    if not tracing.enabled:
        return tracing.NOT_TRACED
    return _recording_spans(messages)


@contextmanager
def _recording_spans(messages: list[Any]) -> Iterator[None]:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context

    tracer = tracing.tracer(__name__)
    spans = []
    for message in messages:
        headers = message.headers if isinstance(message.headers, Mapping) else {}
        delivery = message.delivery_info or {}
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": str(delivery.get("exchange") or ""),
            "messaging.rabbitmq.destination.routing_key": str(delivery.get("routing_key") or ""),
            "messaging.destination.subscription.name": topology.RECORDER_QUEUE_NAME,
            "messaging.consumer.group.name": "recorder",
        }
        message_id = (message.properties or {}).get("message_id")
        if isinstance(message_id, str):
            attributes["messaging.message.id"] = message_id
        carried = {name: value for name in PROPAGATED_HEADERS if isinstance(value := headers.get(name), str)}
        spans.append(
            tracer.start_span(
                f"process {topology.RECORDER_QUEUE_NAME}",
                context=propagate.extract(carried, context=Context()),
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
            )
        )
    try:
        yield
    finally:
        for span in spans:
            span.end()


def carried_headers(request: Any) -> dict[str, str]:
    """The trace headers of the task message being run."""
    found = {}
    for name in PROPAGATED_HEADERS:
        value = internal_celery.request_header(request, name)
        if isinstance(value, str):
            found[name] = value
    return found


@contextmanager
def _span(
    name: str,
    *,
    kind: str,
    parent: Context | None,
    attributes: Callable[[], dict[str, Any]],
    links: list[Link] | None = None,
) -> Iterator[dict[str, str]]:
    """``attributes`` are worked out only for a span the sampler keeps."""
    from opentelemetry import propagate, trace

    headers: dict[str, str] = {}
    if tracing.left_out(parent):
        propagate.inject(headers, context=parent)
        yield headers
        return
    with tracing.tracer(__name__).start_as_current_span(
        name, context=parent, kind=trace.SpanKind[kind], links=links or ()
    ) as span:
        if span.is_recording():
            span.set_attributes(attributes())
        propagate.inject(headers)
        yield headers


def _message_attributes(envelope: Any, *, exchange: str, routing_key: str, operation: str) -> dict[str, Any]:
    """The messaging semantic conventions' attributes of a message holding ``envelope``
    (RabbitMQ: the destination is the exchange, "" for the default one, and the routing key)."""
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": "publish" if operation == "send" else operation,
        "messaging.destination.name": exchange,
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
    if isinstance(envelope, Mapping):
        for attribute, field in (
            ("messaging.message.id", "id"),
            ("messaging.message.conversation_id", "correlation_id"),
            ("cloudevents.event_type", "type"),
        ):
            value = envelope.get(field)
            if isinstance(value, str):
                attributes[attribute] = value
    return attributes
