"""What every subscriber shares: the Celery task base, exactly-once effects and failure records.

A subscriber is a plain handler function plus a thin task declared with ``subscriber_task``.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn, cast

from celery import Task
from celery.exceptions import Reject, Retry
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction
from django.utils import timezone

from marketplace import metrics
from marketplace.celery import app, confirming_producer
from marketplace.events import dead_letters, topology
from marketplace.events import headers as message_headers
from marketplace.events import tracing as event_tracing
from marketplace.events.envelope import InvalidEnvelope, check_deployment, validate_envelope
from marketplace.events.errors import TRANSIENT_ERRORS
from marketplace.events.models import DeliveryAttempt, FailedEvent, FailedEventReplay, ProcessedEvent
from marketplace.events.outages import is_database_outage
from marketplace.internals import celery as internal_celery

logger = logging.getLogger(__name__)


def claim_event(*, subscriber: str, event_id: str | uuid.UUID) -> bool:
    """Within the caller's transaction, mark the event handled; False if it already was.

    A concurrent duplicate blocks on the unique index until the first commits (then sees the
    marker) or rolls back (then takes over), so at most one effect is ever committed.
    """
    # Not an assert: `python -O` would drop it, and a marker committed apart from its effect breaks exactly-once.
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("claim_event must run inside the effect's transaction")
    return insert_once(ProcessedEvent(subscriber=subscriber, event_id=event_id))


def insert_once(row: models.Model, *, unless: Mapping[str, Any] | None = None) -> bool:
    """INSERT ``row`` unless a row with the same unique key exists, or a row of the same table has
    the field values ``unless`` gives; True if it was inserted.

    One statement, no savepoint (get_or_create costs a SELECT, a SAVEPOINT, the INSERT and a
    RELEASE; an exists() first, one more round trip). Like the unique index itself, it waits for
    a concurrent insert of the same key to commit (then inserts nothing) or roll back (then
    inserts). ``unless`` sees what was committed when the statement started.

    The statement's text is built once per model and ``unless`` fields: composing it through the
    ORM for every event cost more CPU than the database spent running it.
    """
    connection = transaction.get_connection()
    conditions = tuple(unless or ())
    sql, fields, condition_fields = _insert_once_statement(type(row), conditions)
    params = [field.get_db_prep_save(field.pre_save(row, add=True), connection) for field in fields]
    for name, field in zip(conditions, condition_fields, strict=True):
        assert unless is not None  # noqa: S101 - narrows the type for mypy: conditions are its keys
        if unless[name] is None:
            raise ValueError(f"insert_once: unless={{{name!r}: None}} would never match a row")
        params.append(field.get_db_prep_value(unless[name], connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted: bool = cursor.rowcount == 1
        return inserted


@functools.cache
def _insert_once_statement(
    model: type[models.Model], conditions: tuple[str, ...]
) -> tuple[str, list[models.Field[Any, Any]], list[models.Field[Any, Any]]]:
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(quote(field.column) for field in fields)
    # ``unless`` names the model's own columns, never a reverse relation.
    condition_fields = [cast("models.Field[Any, Any]", model._meta.get_field(name)) for name in conditions]
    if not condition_fields:
        source = f"VALUES ({', '.join(['%s'] * len(fields))})"
    else:
        # Cast: in a SELECT list the parameters do not take the types of the columns they go into.
        selected = ", ".join(f"CAST(%s AS {field.cast_db_type(connection)})" for field in fields)
        where = " AND ".join(f"{quote(field.column)} = %s" for field in condition_fields)
        # S608: table, columns and casts come from the model (quoted); every value is a parameter.
        source = f"SELECT {selected} WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {where})"  # noqa: S608
    return f"INSERT INTO {table} ({columns}) {source} ON CONFLICT DO NOTHING", fields, condition_fields


class SubscriberTask(Task[Any, Any]):
    """Base for subscriber tasks: where a failed attempt goes next.

    - our own database unavailable: wait SUBSCRIBER_INFRA_RETRY_SECONDS in the retry queue,
      without spending the retry budget (for up to SUBSCRIBER_INFRA_RETRY_MAX_SECONDS);
    - a transient downstream failure: wait the policy's backoff in the subscriber's retry queue;
    - anything else, or retries exhausted: publish the message with the failure in its headers
      to the dead-letter exchange (no database needed), then fail, which acknowledges it.

    Every republish is publisher-confirmed before the original is acknowledged, and carries the
    same task id, so Flower shows one task with its retries.
    """

    subscriber: str = ""
    acks_late = True
    attempt_started: float  # set by the task function when an attempt starts

    def handle(self, exc: BaseException) -> NoReturn:
        event_tracing.failed(exc)
        try:
            self._route_failure(exc)
        except (Retry, Reject):
            raise
        except Exception as unexpected:
            if unexpected is exc:
                raise
            # Never acknowledge a message whose failure we could not route (its retry-state
            # headers were not ours, say): RabbitMQ dead-letters it instead, and it is recorded.
            logger.exception("%s: could not route the failure of %s; rejecting it", self.name, self.request.id)
            raise Reject(exc, requeue=False) from unexpected  # type: ignore[arg-type]  # stub: any exception is a reason

    def _route_failure(self, exc: BaseException) -> NoReturn:
        request = self.request
        attempts = _count(request, message_headers.ATTEMPTS)
        first_failed_at = _header(request, message_headers.FIRST_FAILED_AT, None) or message_headers.now_iso()
        headers = {
            message_headers.FIRST_FAILED_AT: first_failed_at,
            message_headers.REPLAY_OF: _header(request, message_headers.REPLAY_OF, ""),
        }
        # Our own database unavailable: waited out without spending the subscriber's retry budget.
        if is_database_outage(exc) and self._may_wait_for_infrastructure(request):
            delay = settings.SUBSCRIBER_INFRA_RETRY_SECONDS
            headers |= {
                message_headers.ATTEMPTS: attempts,
                message_headers.INFRA_WAITS: _count(request, message_headers.INFRA_WAITS) + 1,
                message_headers.WAITING_SINCE: _header(request, message_headers.WAITING_SINCE, None)
                or message_headers.now_iso(),
            }
            logger.warning(
                "%s: our database is unavailable (%s); event waits %ss, retries not spent", self.name, exc, delay
            )
            raise self._retry_in(delay, exc, headers)
        attempts += 1
        policy = settings.SUBSCRIBER_RETRY[self.subscriber]
        if isinstance(exc, TRANSIENT_ERRORS) and attempts <= policy["max_retries"]:
            delay = topology.retry_delay(attempts - 1, **policy)
            retry = self._retry_in(delay, exc, headers | {message_headers.ATTEMPTS: attempts})
            self._record_attempt(DeliveryAttempt.Outcome.RETRYING, exc)
            raise retry
        self._dead_letter(exc, headers | {message_headers.ATTEMPTS: attempts}, first_failed_at)
        self._record_attempt(DeliveryAttempt.Outcome.DEAD_LETTERED, exc)
        raise exc

    def _record_attempt(self, outcome: str, exc: BaseException | None = None) -> None:
        """Delivery history (events/models.py DeliveryAttempt): best effort, never in the way of
        the retry or dead letter already published."""
        request = self.request
        started = getattr(self, "attempt_started", None) or time.time()
        replay_of = _header(request, message_headers.REPLAY_OF, "")
        try:
            DeliveryAttempt.objects.create(
                subscriber=self.subscriber,
                event_id=dead_letters.event_uuid(request.args[0] if request.args else None),
                task_id=request.id or "",
                attempt=min(
                    _count(request, message_headers.ATTEMPTS) + _count(request, message_headers.INFRA_WAITS) + 1,
                    dead_letters.MAX_COUNT,
                ),
                started_at=datetime.fromtimestamp(started, UTC),
                duration_ms=round((time.time() - started) * 1000, 3),
                worker=request.hostname or "",
                outcome=outcome,
                error="" if exc is None else f"{message_headers.exception_name(exc)}: {exc}"[:10_000],
                replay_of_id=int(replay_of) if str(replay_of).isdigit() else None,
            )
        except Exception:  # best effort: the message is settled already, whatever its headers hold
            logger.warning("could not record the delivery attempt of %s", request.id, exc_info=True)

    def _may_wait_for_infrastructure(self, request: Any) -> bool:
        since = dead_letters.parse_time(_header(request, message_headers.WAITING_SINCE, None))
        if since is None:
            return True
        limit: float = settings.SUBSCRIBER_INFRA_RETRY_MAX_SECONDS
        return (timezone.now() - since).total_seconds() < limit

    def _retry_in(self, delay: int, exc: BaseException, headers: dict[str, Any]) -> Retry:
        subscriber = topology.subscriber_named(self.subscriber)
        queue = subscriber.retry_queue(delay)
        try:
            with event_tracing.republishing(
                request=self.request, exchange=topology.DIRECT_TO_QUEUE.name, routing_key=queue.name
            ) as trace_headers:
                internal_celery.republish_signature(
                    self,
                    self.request,
                    queue=queue,
                    retries=self.request.retries + 1,
                    headers=headers | trace_headers,
                ).apply_async(producer=confirming_producer())
        except Exception as publish_error:
            # Not acknowledged: back to its queue (counted against the delivery limit), never lost.
            logger.warning("could not publish the retry of %s (%s); returning it", self.request.id, publish_error)
            raise Reject(exc, requeue=True) from publish_error  # type: ignore[arg-type]  # stub: any exception is a reason
        metrics.count_retried(self.subscriber)
        return Retry(exc=exc, when=delay)  # type: ignore[arg-type]  # stub: Exception and numbers.Real; any exc, int work

    def _dead_letter(self, exc: BaseException, headers: dict[str, Any], first_failed_at: str) -> None:
        subscriber = topology.subscriber_named(self.subscriber)
        failure = message_headers.failure_headers(
            exc=exc, attempts=headers[message_headers.ATTEMPTS], first_failed_at=first_failed_at
        )
        logger.error(
            "subscriber %s gave up on event %s after %d attempt(s): %s: %s",
            self.subscriber,
            dead_letters.event_uuid(self.request.args[0] if self.request.args else None) or "(no id)",
            headers[message_headers.ATTEMPTS],
            type(exc).__name__,
            exc,
        )
        metrics.count_dead_lettered(self.subscriber)
        try:
            with event_tracing.republishing(
                request=self.request,
                exchange=topology.DEAD_LETTER_EXCHANGE.name,
                routing_key=subscriber.dead_letter_queue_name,
            ) as trace_headers:
                # The queue is named so the original delivery's exchange (the fanout) is not reused.
                internal_celery.republish_signature(
                    self, self.request, queue=subscriber.queue, headers=headers | failure | trace_headers
                ).apply_async(
                    exchange=topology.DEAD_LETTER_EXCHANGE.name,
                    routing_key=subscriber.dead_letter_queue_name,
                    declare=[],
                    producer=confirming_producer(),
                )
        except Exception:
            # RabbitMQ dead-letters it itself (at least once): the record loses only the exception.
            logger.exception("could not publish the dead letter of %s; rejecting it instead", self.request.id)
            raise Reject(exc, requeue=False) from exc  # type: ignore[arg-type]  # stub: any exception is a reason

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        metrics.count_processed(self.subscriber)
        replay_of = _header(self.request, message_headers.REPLAY_OF, "")
        if not replay_of and not self.request.retries:
            return  # the hot path (a first attempt that succeeded) writes nothing more
        self._record_attempt(DeliveryAttempt.Outcome.SUCCEEDED)
        if not replay_of:
            return
        try:
            FailedEvent.objects.filter(pk=int(replay_of)).mark_resolved()
            FailedEventReplay.objects.finish_pending(failed_event_id=int(replay_of), succeeded=True)
        except Exception:  # best effort: the message is settled already, whatever its headers hold
            logger.exception("replay of failed event %s succeeded but could not be marked resolved", replay_of)


def _header(request: Any, name: str, default: Any) -> Any:
    value = internal_celery.request_header(request, name)
    return default if value is None else value


def _count(request: Any, name: str) -> int:
    """A retry-state count the message carries; 0 when it is not one a count can be."""
    return dead_letters.header_int({name: internal_celery.request_header(request, name)}, name)


def subscriber_task(name: str, handlers: Mapping[str, Callable[..., Any]]) -> Task[Any, Any]:
    """Declare the Celery task of subscriber ``name`` (see topology.SUBSCRIBERS).

    ``handlers`` maps each event type the subscriber acts on (exactly its ``event_types`` in the
    topology) to a plain function, called as ``handler(envelope=...)`` with the validated
    envelope. Failures follow SubscriberTask.handle: retries wait in the subscriber's own retry
    queues, never in the worker or the fanout.
    """
    subscriber = topology.subscriber_named(name)
    if set(handlers) != set(subscriber.event_types):
        raise ImproperlyConfigured(
            f"subscriber {name} has handlers for {sorted(handlers)} but topology.SUBSCRIBERS gives it "
            f"the event types {sorted(subscriber.event_types)}"
        )

    def task(self: SubscriberTask, *args: Any, **kwargs: Any) -> Any:
        self.attempt_started = time.time()
        with event_tracing.processing(subscriber=subscriber, request=self.request, envelope=args[0] if args else None):
            try:
                if len(args) != 1 or kwargs:
                    raise InvalidEnvelope(
                        f"a subscriber task takes one envelope, got {len(args)} args {sorted(kwargs)}"
                    )
                envelope = validate_envelope(args[0])
                check_deployment(envelope)
                handler = handlers.get(envelope["type"])
                if handler is None:  # the consumer skips other types; a replay or a direct publish may not
                    raise InvalidEnvelope(f"{name} does not handle {envelope['type']!r} events")
                with metrics.timed_handler(name):
                    return handler(envelope=envelope)
            except Exception as exc:
                self.handle(exc)

    task.__name__ = task.__qualname__ = subscriber.task.rpartition(".")[2]
    task.__module__ = next(iter(handlers.values())).__module__
    task.__doc__ = "\n".join(
        f"{event_type}: {handler.__doc__.splitlines()[0]}"
        for event_type, handler in handlers.items()
        if handler.__doc__
    )
    return app.task(task, name=subscriber.task, base=SubscriberTask, bind=True, subscriber=name)  # type: ignore[call-overload,no-any-return]  # stub: fun with options is missing
