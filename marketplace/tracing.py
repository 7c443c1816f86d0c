"""OpenTelemetry tracing for every process: one order, one trace (docs/observability.md#traces).

Each kind of process calls ``configure()`` once as it starts: the web (marketplace/wsgi.py), every
Celery pool process (marketplace/celery.py), the relay, the recorder and the replay command. What
it does is configured through the SDK's standard variables alone (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_*, OTEL_BSP_*, OTEL_PROPAGATORS,
...); there is no setting of our own.

**On or off.** Tracing is off when OTEL_SDK_DISABLED is true. Otherwise it is on when
OTEL_TRACES_EXPORTER names an exporter (``otlp``, ``console``) or an OTLP endpoint is set
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and off when neither is: the
SDK's own default would export to localhost:4318 whether anything listens there or not, paying for
every span and logging a failed export every few seconds. Off, nothing of the SDK is imported and
no instrumentation is installed; the few places that would trace check ``enabled`` and go on.

**On**, it installs the instrumentations (Django in the web; psycopg, httpx and logging everywhere)
and exports over OTLP/HTTP (protobuf) through a BatchSpanProcessor, flushed when the process ends
(``flush()``, and the SDK's own exit hook). Database queries and HTTP calls are traced only inside
a traced operation (a request, a publish, a task): the relay's and the recorder's polling would
otherwise make a trace of their own every second. Inside an operation the sampler left out
(OTEL_TRACES_SAMPLER), the instrumentations are suppressed: a query's span would not be recorded,
yet making it costs a good part of what recording does (docs/benchmarks.md). An operation whose
parent was left out, with the sampler following the parent (the default), makes no span at all: it
passes the parent's context on (``left_out``, ``passing_on``). The event bus's own spans (publish,
process, retries, replays) are in marketplace/events/tracing.py.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django.core.mail import EmailMessage
    from django.http import HttpRequest, HttpResponse
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace import TracerProvider as TracerProviderApi

WEB = "web"  # the process kind that serves HTTP, and so gets the Django instrumentation
# The W3C trace context: what an event records of the operation that created it (its traceparent
# and tracestate CloudEvents extension attributes), and what a message or an email carries.
W3C_FIELDS = ("traceparent", "tracestate")
# version-trace_id-parent_id-flags (W3C Trace Context); a later version may append fields.
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?P<trace_id>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}(-|$)")
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Where an unsampled request keeps what lifts the suppression of the instrumentations at its end.
_UNSAMPLED_REQUEST = "marketplace.tracing.unsampled"

enabled = False  # set once by configure(): read on the hot paths, so that off costs one lookup
_provider: TracerProvider | None = None
# Set by configure(): the sampler follows the parent's decision (ParentBased: the SDK's default, and
# every parentbased_* OTEL_TRACES_SAMPLER), so a span under a parent left out is left out too.
_parent_decides = False
# What every tracing context manager is while tracing is off (or has nothing to do): one shared
# object, so that off costs no allocation.
NOT_TRACED: AbstractContextManager[None] = nullcontext()


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OTEL_* variables ask for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(environ)
    if exporters:
        return exporters != ["none"]
    return any(environ.get(name, "").strip() for name in OTLP_ENDPOINTS)


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    return [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]


def configure(process: str) -> bool:
    """Set up tracing for this process if the environment asks for it; True if it is on.

    ``process`` names the kind of process (``web``, ``relay``, ``order_confirmation``, ...): the
    service name is ``marketplace-<process>`` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
    name one. Call it after any fork: the exporting thread does not survive one.
    """
    global enabled, _provider, _parent_decides
    if enabled or not wanted():
        return enabled
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"marketplace-{process}"}))
    resource = _hashed_once(resource)
    processors = [BatchSpanProcessor(exporter) for exporter in _exporters()]
    # Operations (requests, publishes, tasks) are sampled by OTEL_TRACES_SAMPLER (the SDK reads it).
    _provider = TracerProvider(resource=resource)
    # Queries and HTTP calls only ever join an operation's trace; one outside any is not recorded.
    within_operations = TracerProvider(resource=resource, sampler=ParentBased(root=ALWAYS_OFF), shutdown_on_exit=False)
    for processor in processors:
        _provider.add_span_processor(processor)
        within_operations.add_span_processor(processor)
    trace.set_tracer_provider(_provider)
    _parent_decides = isinstance(_provider.sampler, ParentBased)
    _instrument(process, _joining(within_operations))
    enabled = True
    return True


def _hashed_once(resource: Resource) -> Resource:
    """The same resource, hashed once: the OTLP encoder groups every span it exports by resource,
    and Resource hashes its attributes as sorted JSON each time (3 µs a span)."""
    from opentelemetry.sdk.resources import Resource

    class HashedOnce(Resource):
        @functools.cached_property
        def _hash(self) -> int:
            return super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return HashedOnce(resource.attributes, resource.schema_url)


def _joining(provider: TracerProvider) -> TracerProviderApi:
    """``provider``, handing out tracers whose spans only ever join an operation: outside any (the
    relay's and the recorder's polling, the on-commit publisher recording what it published) a
    query or an HTTP call makes no span at all. The SDK would start one only for the sampler to
    leave it out, which costs most of what making a recorded span does: an eighth of what tracing
    cost an unsampled order in the web (instructions counted by callgrind, in one process)."""
    from opentelemetry import trace

    def in_operation(context: Context | None) -> bool:
        return trace.get_current_span(context).get_span_context().is_valid

    class JoiningTracer(trace.Tracer):
        def __init__(self, tracer: Tracer) -> None:
            self._tracer = tracer

        def start_span(self, name: str, context: Context | None = None, *args: Any, **kwargs: Any) -> Span:
            if in_operation(context):
                return self._tracer.start_span(name, context, *args, **kwargs)
            return trace.INVALID_SPAN

        def start_as_current_span(  # type: ignore[override]  # the API types its return by a private class
            self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
        ) -> AbstractContextManager[Span]:
            if in_operation(context):
                return self._tracer.start_as_current_span(name, context, *args, **kwargs)
            return nullcontext(trace.INVALID_SPAN)

    class JoiningTracerProvider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
            return JoiningTracer(provider.get_tracer(*args, **kwargs))

    return JoiningTracerProvider()


def _exporters() -> Iterator[SpanExporter]:
    for name in _exporter_names(os.environ) or ["otlp"]:
        if name == "otlp":
            protocol = (
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            if protocol.strip() != "http/protobuf":
                raise ImproperlyConfigured(f"OTLP protocol {protocol!r}: only http/protobuf is installed")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            yield OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            yield ConsoleSpanExporter()
        elif name != "none":
            raise ImproperlyConfigured(f"OTEL_TRACES_EXPORTER={name!r}: only otlp, console and none are installed")


def _instrument(process: str, within_operations: TracerProviderApi) -> None:
    """The instrumentations, but those OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names (``psycopg``, say:
    a span per query is most of what tracing costs, docs/benchmarks.md)."""
    disabled = {name.strip() for name in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if process == WEB and "django" not in disabled:
        # Before the WSGI handler loads the middleware: this adds its own in front.
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument(request_hook=_quiet_unsampled_request, response_hook=_end_of_request)
    if "psycopg" not in disabled:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(tracer_provider=within_operations)
    if "httpx" not in disabled:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument(tracer_provider=within_operations, request_hook=_redact_request_url)
    if "logging" not in disabled:
        # Trace and span ids on every log record (LogTraceIds shows them); logs are not exported.
        from opentelemetry.instrumentation.logging import LoggingInstrumentor

        LoggingInstrumentor().instrument(inject_trace_context=True, enable_log_auto_instrumentation=False)


def _redact_request_url(span: Any, request: Any) -> None:
    """A seller's webhook URL may hold a credential (?token=...): spans get it as logs do."""
    from marketplace.redaction import redact_url

    attributes = getattr(span, "attributes", None) or {}
    for key in ("http.url", "url.full"):
        if key in attributes:
            span.set_attribute(key, redact_url(str(request.url)))


def quiet_if_unsampled(span: Span) -> AbstractContextManager[object]:
    """Inside an operation the sampler left out, no instrumentation (psycopg, httpx) makes a span;
    our own spans still do, unrecorded (unless ``left_out`` saw it coming), so the trace context
    with its sampled flag travels on."""
    return NOT_TRACED if span.is_recording() else _instrumentation_suppressed()


def left_out(parent: Context | None = None) -> bool:
    """Whether a span started under ``parent`` (the current context when None) is known to be left
    out without asking the SDK: its parent was, and the sampler follows the parent (the default).

    Most operations are not sampled in production (1 in 100, docs/observability.md), and starting
    a span only to learn that costs a task about 0.3 ms of the SDK's machinery (sampler, ids,
    context managers): such an operation passes its parent's trace context on instead
    (``passing_on``), as every span under it would have, flagged not sampled."""
    if not _parent_decides:
        return False
    from opentelemetry import trace

    span_context = trace.get_current_span(parent).get_span_context()
    return span_context.is_valid and not span_context.trace_flags.sampled


@contextmanager
def passing_on(parent: Context) -> Iterator[None]:
    """Run inside ``parent`` (an operation left out, see ``left_out``) with the instrumentations
    suppressed, making no span: what is propagated from inside is the parent's context."""
    from opentelemetry import context

    token = context.attach(parent)
    try:
        with _instrumentation_suppressed():
            yield
    finally:
        context.detach(token)


def _instrumentation_suppressed() -> AbstractContextManager[object]:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def _quiet_unsampled_request(span: Span, request: HttpRequest) -> None:
    if not span.is_recording():
        quiet = ExitStack()
        quiet.enter_context(_instrumentation_suppressed())
        request.META[_UNSAMPLED_REQUEST] = quiet


def _end_of_request(span: Span, request: HttpRequest, response: HttpResponse) -> None:
    quiet = request.META.pop(_UNSAMPLED_REQUEST, None)
    if quiet is not None:
        quiet.close()


@functools.cache
def tracer(name: str) -> Tracer:
    """One tracer per instrumenting module for the process's life: getting one costs about as much
    as starting a span. Before configure() it is the API's proxy, which follows the provider set later."""
    from opentelemetry import trace

    return trace.get_tracer(name)


@functools.cache
def _w3c_propagator() -> TextMapPropagator:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def flush(timeout_millis: int = 5_000) -> None:
    """Export the spans still buffered: as a process ends (a Celery pool process ends without
    running exit hooks)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


# --- the W3C trace context, in envelopes, messages and emails ------------------------------------


def current_trace_context() -> dict[str, str]:
    """The current span's W3C trace context (``traceparent``, and ``tracestate`` when it has one):
    what an event records of the operation that created it. Empty when tracing is off or no
    operation is traced."""
    if not enabled:
        return {}
    carrier: dict[str, str] = {}
    _w3c_propagator().inject(carrier)
    return carrier


def w3c_fields(carrier: Any) -> dict[str, str]:
    """The W3C trace context fields of ``carrier`` (an envelope or message headers, of any shape)."""
    if not isinstance(carrier, Mapping):
        return {}
    return {name: value for name in W3C_FIELDS if isinstance(value := carrier.get(name), str)}


def w3c_context(carrier: Any) -> Context:
    """The context a W3C ``traceparent`` in ``carrier`` names (an empty one for none, or a malformed one)."""
    from opentelemetry.context import Context

    return _w3c_propagator().extract(w3c_fields(carrier), context=Context())


def trace_id_of(carrier: Any) -> str | None:
    """The trace id (32 hex digits) of the W3C ``traceparent`` in ``carrier``, if it has a valid one."""
    match = TRACEPARENT.match(w3c_fields(carrier).get("traceparent", ""))
    if match is None or match["trace_id"] == "0" * 32:
        return None
    return match["trace_id"]


def sending_email(message: EmailMessage) -> AbstractContextManager[object]:
    """A client span around sending ``message``, whose context it carries in its ``traceparent``
    (and ``tracestate``) header: the email is the trace's last hop."""
    if not enabled:
        return NOT_TRACED
    return _email_span(message)


@contextmanager
def _email_span(message: EmailMessage) -> Iterator[object]:
    from django.conf import settings
    from opentelemetry import propagate, trace

    if left_out():
        propagate.inject(message.extra_headers)
        yield None
        return
    with tracer(__name__).start_as_current_span("send email", kind=trace.SpanKind.CLIENT) as span:
        if span.is_recording():
            span.set_attributes(_email_attributes(settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT))
        propagate.inject(message.extra_headers)
        yield span


@functools.cache
def _email_attributes(backend: str, host: str, port: int) -> dict[str, Any]:
    from django.core.mail.backends.smtp import EmailBackend as SMTPEmailBackend
    from django.utils.module_loading import import_string

    attributes: dict[str, Any] = {"marketplace.email.backend": backend}
    if issubclass(import_string(backend), SMTPEmailBackend):
        attributes |= {"server.address": host, "server.port": port}
    return attributes


# --- log lines -------------------------------------------------------------------------------


class LogTraceIds(logging.Filter):
    """Gives every record ``trace_ids``: ``trace_id=<32 hex> span_id=<16 hex> `` inside a traced
    operation, empty otherwise (settings.LOGGING prints it). The ids are the logging
    instrumentation's (``otelTraceID``, ``otelSpanID``), installed only while tracing is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = getattr(record, "otelTraceID", "0")
        span_id = getattr(record, "otelSpanID", "0")
        record.trace_ids = "" if trace_id == "0" else f"trace_id={trace_id} span_id={span_id} "
        return True
