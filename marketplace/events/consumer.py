"""The worker's message consumer, taught to accept raw events from the fanout exchange.

Events on a subscriber queue are plain JSON envelopes (the public contract), not Celery task
messages. When the worker receives one, it *adopts* it: it publishes a Celery message for the
queue's subscriber task straight to the same queue (default exchange, publisher-confirmed) and
then acknowledges the raw event. From then on it is an ordinary Celery task: retries, Flower and
dead-lettering all work as usual, and none of it passes through the fanout exchange again.

Anything on the queue that is neither a valid event nor a task message of ours (bytes that do not
decode, an invalid envelope, a task this worker does not know) is published, byte for byte with
the reason in its headers, to the subscriber's dead-letter queue and then acknowledged, so it never
blocks the queue and always gets a FailedEvent (see events/dead_letters.py).
"""

from __future__ import annotations

import logging
import uuid

from celery.exceptions import NotRegistered
from celery.worker.consumer import Consumer

from marketplace.events import topology
from marketplace.events.envelope import InvalidEnvelope, validate_envelope

logger = logging.getLogger(__name__)

ADOPTION_NAMESPACE = uuid.UUID("8a4c2f8e-5b1d-4f57-9a43-6c1f0f7d2b11")


def adopted_task_id(subscriber: topology.Subscriber, event_id: str) -> str:
    """Deterministic, so a redelivered event shows as the same task in Flower."""
    return str(uuid.uuid5(ADOPTION_NAMESPACE, f"{subscriber.name}:{event_id}"))


class EventConsumer(Consumer):
    class Blueprint(Consumer.Blueprint):
        # Retries wait in our own TTL retry queues (topology.py); Celery's native delayed delivery
        # would only declare 28 exchanges and queues that nothing uses.
        default_steps = [step for step in Consumer.Blueprint.default_steps if not step.endswith(":DelayedDelivery")]

    def on_unknown_message(self, body, message):
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_unknown_message(body, message)
        try:
            envelope = validate_envelope(body)
        except InvalidEnvelope as exc:
            return self._dead_letter(subscriber, message, exc)
        if envelope["type"] not in subscriber.event_types:
            logger.debug("%s does not handle %s events; skipping %s", subscriber.name, envelope["type"], envelope["id"])
            return message.ack()
        try:
            self.app.tasks[subscriber.task].apply_async(
                args=[envelope],
                task_id=adopted_task_id(subscriber, envelope["id"]),
                queue=subscriber.queue_name,
            )
        except self.connection_errors:
            # Not acknowledged: the broker redelivers the event once the connection is back.
            logger.warning("could not adopt event %s for %s; it will be redelivered", envelope["id"], subscriber.name)
            return
        except Exception as exc:
            return self._dead_letter(subscriber, message, exc)
        message.ack()

    def on_decode_error(self, message, exc):
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_decode_error(message, exc)
        return self._dead_letter(subscriber, message, exc)

    def on_unknown_task(self, body, message, exc):
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_unknown_task(body, message, exc)
        name = (message.headers or {}).get("task")
        return self._dead_letter(subscriber, message, NotRegistered(f"{name!r} is not a task of {subscriber.name}"))

    def on_invalid_task(self, body, message, exc):
        subscriber = self._subscriber_of(message)
        if subscriber is None:
            return super().on_invalid_task(body, message, exc)
        return self._dead_letter(subscriber, message, exc)

    def _dead_letter(self, subscriber, message, exc):
        # Imported here: the worker loads this class before Django's app registry is ready.
        from marketplace.events import dead_letters

        logger.error(
            "%s cannot process a message (%s: %s); dead-lettering it", subscriber.name, type(exc).__name__, exc
        )
        try:
            with self.app.producer_or_acquire() as producer:
                dead_letters.publish_raw(
                    producer, message, subscriber=subscriber, headers=dead_letters.failure_headers(exc=exc, attempts=1)
                )
        except self.connection_errors:
            logger.warning("could not dead-letter a message of %s; it will be redelivered", subscriber.name)
            return
        except Exception:
            # RabbitMQ dead-letters it itself (at least once); only the reason is lost.
            logger.exception("could not dead-letter a message of %s; rejecting it", subscriber.name)
            return message.reject(requeue=False)
        message.ack()

    def _subscriber_of(self, message) -> topology.Subscriber | None:
        tag = message.delivery_info.get("consumer_tag")
        # kombu keeps the consumer tag of every queue it consumes from; invert it.
        for queue_name, queue_tag in getattr(self.task_consumer, "_active_tags", {}).items():
            if queue_tag == tag:
                return topology.subscriber_for_queue(queue_name)
        return None
