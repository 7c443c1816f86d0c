"""The worker's message consumer, taught to accept raw events from the fanout exchange.

Events on a subscriber queue are plain JSON envelopes (the public contract), not Celery task
messages. When the worker receives one, it *adopts* it in place: it rewrites the delivered
message, in memory, into a Celery task message for the queue's subscriber task (the envelope is
its one argument, the task id is derived from subscriber and event id) and hands it to Celery as
if it had arrived that way. The raw delivery is acknowledged when the task finishes, like any
task message; retries and dead letters are Celery messages published to the subscriber's own
queues, so none of it passes through the fanout again, and no event is published twice.

Anything on the queue that is neither an event nor a task message of ours (bytes that do not
decode, JSON that is not an event, a task this worker does not know) is published, byte for byte
with the reason in its headers, to the subscriber's dead-letter queue and then acknowledged, so
it never blocks the queue and always gets a FailedEvent (see events/dead_letters.py). An event
that fails its schema is the task's to reject: it dead-letters it the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from amqp.exceptions import ConsumerCancelled
from celery import Celery
from celery.exceptions import NotRegistered
from celery.worker.consumer import Consumer
from kombu.utils.json import dumps

from marketplace.events import headers as message_headers
from marketplace.events import topology
from marketplace.internals import amqp as internal_amqp
from marketplace.internals import celery as internal_celery
from marketplace.internals import kombu as internal_kombu

logger = logging.getLogger(__name__)

ARGSREPR_BYTES = 1024  # Celery's own default argsrepr size


def _utf8_json(message: Any, envelope: dict[str, Any]) -> bytes:
    """The event as UTF-8 JSON text: the delivered bytes themselves when they are that already."""
    if isinstance(message.body, bytes) and (message.content_encoding or "utf-8").lower() in ("utf-8", "utf8"):
        return message.body
    return dumps(envelope).encode()


class NotAnEvent(ValueError):
    """A message on a subscriber queue that is neither a task message nor an event envelope."""


class EventConsumer(Consumer):
    # Set by Celery (the Tasks bootstep, the connection): not in celery-types' Consumer stub.
    task_consumer: Any
    connection_errors: tuple[type[BaseException], ...]

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc,valid-type]  # a class; the stub declares a variable
        # Retries wait in our own TTL retry queues (topology.py); Celery's native delayed delivery
        # would only declare 28 exchanges and queues that nothing uses.
        default_steps = internal_celery.without_step(Consumer.Blueprint.default_steps, "DelayedDelivery")

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        on_task_received = super().create_task_handler(*args, **kwargs)
        # Called as the worker starts consuming, on every (re)connection: bodies stay the bytes
        # that were sent, so a message dead-lettered from here is recorded byte for byte.
        if self.task_consumer is not None:
            internal_amqp.raw_bodies(self.task_consumer.channel)

        def on_message(message: Any) -> Any:
            try:
                subscriber = None if "task" in (message.headers or {}) else self._subscriber_of(message)
                if subscriber is not None and not self._adopt(subscriber, message):
                    return None
                return on_task_received(message)
            except self.connection_errors:
                raise
            except Exception as exc:
                # Celery settles what it expects to go wrong with a message (unknown task, bad
                # payload); anything else raised here would leave the consumer and stop the
                # worker, and the next worker would be handed the same message.
                return self._settle_unexpected(message, exc)

        return on_message

    def _settle_unexpected(self, message: Any, exc: Exception) -> None:
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            logger.exception("a message the worker cannot read; rejecting it")
            return message.reject(requeue=False)  # type: ignore[no-any-return]  # Message.reject returns None
        return self._dead_letter(subscriber, message, exc)

    def _adopt(self, subscriber: topology.Subscriber, message: Any) -> bool:
        """Turn a raw event into a task message in place; False if it was settled here instead."""
        try:
            envelope = message.decode()
            if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str) or "id" not in envelope:
                raise NotAnEvent(f"not an event envelope: {str(envelope)[:200]!r}")
        except Exception as exc:
            self._dead_letter(subscriber, message, exc)
            return False
        if envelope["type"] not in subscriber.event_types:
            logger.debug("%s does not handle %s events; skipping %s", subscriber.name, envelope["type"], envelope["id"])
            message.ack()
            return False
        from marketplace.events.dead_letters import without_broker_headers

        task_id = subscriber.adopted_task_id(str(envelope["id"]))
        envelope_json = _utf8_json(message, envelope)
        task_headers, message.body = internal_celery.task_message_body(
            self.app,
            task_id,
            subscriber.task,
            args_json=envelope_json,
            root_id=task_id,
            ignore_result=True,
            origin="adopted",
            # What Flower shows as the arguments; Celery's saferepr of the envelope costs more than the task.
            argsrepr=f"[{envelope_json[:ARGSREPR_BYTES].decode(errors='replace')}]",
            kwargsrepr="{}",
        )
        # Headers the event arrived with (a backfill's, a replay's) stay visible to the task, the
        # trace context too (traceparent, tracestate): its handling continues the publish's trace.
        message.headers = {**without_broker_headers(message.headers or {}), **task_headers}
        message.content_type, message.content_encoding = "application/json", "utf-8"
        internal_kombu.forget_decoded_payload(message)
        return True

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if isinstance(exc, ConsumerCancelled):
            # RabbitMQ cancels a consumer whose queue was deleted. The worker re-declares the queue
            # (with its fanout binding) as it reconnects; what the fanout published meanwhile is gone.
            for subscriber in self._cancelled_subscribers(exc):
                threading.Thread(target=recover_lost_queue, args=(self.app, subscriber), daemon=True).start()
        return super().on_connection_error_after_connected(exc)

    def _cancelled_subscribers(self, exc: ConsumerCancelled) -> list[topology.Subscriber]:
        tags = internal_kombu.active_tags(self.task_consumer)
        names = [queue for queue, tag in tags.items() if tag in exc.args] or list(tags)
        return [s for s in map(topology.subscriber_for_queue, names) if s is not None]

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_decode_error(message, exc)
        return self._dead_letter(subscriber, message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_unknown_task(body, message, exc)
        name = (message.headers or {}).get("task")
        return self._dead_letter(subscriber, message, NotRegistered(f"{name!r} is not a task of {subscriber.name}"))

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_invalid_task(body, message, exc)
        return self._dead_letter(subscriber, message, exc)

    def _dead_letter(self, subscriber: topology.Subscriber, message: Any, exc: BaseException) -> None:
        # Imported here: the worker loads this class before Django's app registry is ready.
        from marketplace.celery import confirming_producer
        from marketplace.events import dead_letters

        logger.error(
            "%s cannot process a message (%s: %s); dead-lettering it", subscriber.name, type(exc).__name__, exc
        )
        try:
            dead_letters.publish_raw(
                confirming_producer(),
                message,
                subscriber=subscriber,
                headers=message_headers.failure_headers(exc=exc, attempts=1),
            )
        except self.connection_errors:
            # Back to the queue (counted against its delivery limit) to be tried again.
            logger.warning("could not dead-letter a message of %s; returning it to the queue", subscriber.name)
            return message.reject(requeue=True)  # type: ignore[no-any-return]  # Message.reject returns None
        except Exception:
            # RabbitMQ dead-letters it itself (at least once); only the reason is lost.
            logger.exception("could not dead-letter a message of %s; rejecting it", subscriber.name)
            return message.reject(requeue=False)  # type: ignore[no-any-return]  # Message.reject returns None
        message.ack()

    def _subscriber_of(self, message: Any) -> topology.Subscriber | None:
        queue_name = internal_kombu.queue_of_consumer_tag(self.task_consumer, message.delivery_info.get("consumer_tag"))
        return topology.subscriber_for_queue(queue_name) if queue_name else None


def recover_lost_queue(app: Celery, subscriber: topology.Subscriber) -> None:
    """Alert, wait for the queue to be back, then backfill the events it may have missed."""
    from django.conf import settings
    from django.core.mail import mail_admins
    from django.db import close_old_connections
    from django.utils import timezone

    from marketplace.events.backfill import backfill_events

    lost_at = timezone.now()
    since = lost_at - timedelta(seconds=settings.QUEUE_LOSS_BACKFILL_SECONDS)
    logger.error(
        "queue %s was deleted under its worker; events published until it is back never reached %s. "
        "Backfilling it from the outbox since %s.",
        subscriber.queue_name,
        subscriber.name,
        since.isoformat(),
    )
    try:
        _wait_for_queue(app, subscriber)
        result = backfill_events(subscriber=subscriber, since=since)
        outcome = f"republished {result.published} event(s) created since {since.isoformat()} to it"
    except Exception as exc:
        logger.exception("could not backfill %s after its queue was deleted", subscriber.queue_name)
        outcome = (
            f"the automatic backfill failed ({type(exc).__name__}: {exc}); run\n"
            f"  manage.py backfill_events --subscriber {subscriber.name} --since {since.isoformat()}"
        )
    finally:
        close_old_connections()
    logger.error("queue %s is back; %s", subscriber.queue_name, outcome)
    mail_admins(
        subject=f"[marketplace] queue {subscriber.queue_name} was deleted",
        message=(
            f"RabbitMQ cancelled the consumer of {subscriber.queue_name} at {lost_at.isoformat()}: the queue was "
            f"deleted. The worker declared it again with its fanout binding, and {outcome} "
            "(the subscriber dedupes by event id, so events it already had are not repeated)."
        ),
        fail_silently=True,
    )


def _wait_for_queue(app: Celery, subscriber: topology.Subscriber, timeout: float = 120.0) -> None:
    from marketplace.events.topology_check import exists

    deadline = time.monotonic() + timeout
    with app.connection_for_write() as connection:
        while not exists(connection, lambda channel: channel.queue_declare(subscriber.queue_name, passive=True)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{subscriber.queue_name} did not come back within {timeout:.0f}s")
            time.sleep(0.5)
    time.sleep(1)  # the worker binds it right after declaring it
