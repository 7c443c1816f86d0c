"""The whole messaging topology, declared once.

    publisher ──► marketplace.events (fanout, durable)
                    ├──► marketplace.order_confirmation     ─(dead letters)─► marketplace.order_confirmation.dead
                    ├──► marketplace.seller_notification    ─(dead letters)─► marketplace.seller_notification.dead
                    └──► marketplace.customer_segmentation  ─(dead letters)─► marketplace.customer_segmentation.dead

Every subscriber queue receives each event from the fanout. Celery retries and replays are
published to the subscriber's queue through the default exchange (routing key = queue name), so
they reach that subscriber only and never pass through the fanout again. Rejected messages go
through the ``marketplace.dead-letter`` direct exchange to the subscriber's own dead-letter queue.

Names are fixed; isolation between environments (tests, staging) comes from RabbitMQ vhosts.
This module imports nothing from Django so that settings, Celery and scripts can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kombu import Connection, Exchange, Queue, binding

EVENTS_EXCHANGE = Exchange("marketplace.events", type="fanout", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("marketplace.dead-letter", type="direct", durable=True)
# Celery publishes retries and replays here with routing key = the subscriber's queue name.
DIRECT_TO_QUEUE = Exchange("", type="direct")

# Classic durable queues: see docs/architecture.md ("Queue type") for why not quorum.
QUEUE_TYPE = "classic"


@dataclass(frozen=True)
class Subscriber:
    """One independent consumer of every event: its own queue, worker and dead-letter queue."""

    name: str
    task: str
    # Event types this subscriber acts on; others reaching its queue are acknowledged and skipped.
    event_types: frozenset[str] = frozenset({"order.placed"})

    @property
    def queue_name(self) -> str:
        return f"marketplace.{self.name}"

    @property
    def dead_letter_queue_name(self) -> str:
        return f"{self.queue_name}.dead"

    @property
    def queue(self) -> Queue:
        return Queue(
            self.queue_name,
            exchange=DIRECT_TO_QUEUE,
            routing_key=self.queue_name,
            durable=True,
            queue_arguments={
                "x-queue-type": QUEUE_TYPE,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                "x-dead-letter-routing-key": self.dead_letter_queue_name,
            },
        )

    @property
    def fanout_binding(self) -> binding:
        return binding(EVENTS_EXCHANGE)

    @property
    def dead_letter_queue(self) -> Queue:
        return Queue(
            self.dead_letter_queue_name,
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key=self.dead_letter_queue_name,
            durable=True,
            queue_arguments={"x-queue-type": QUEUE_TYPE},
        )


# Adding a subscriber: a handler, a task named here, and this entry. Nothing in orders/ changes.
SUBSCRIBERS: tuple[Subscriber, ...] = (
    Subscriber("order_confirmation", task="notifications.send_order_confirmation"),
    Subscriber("seller_notification", task="notifications.notify_sellers"),
    Subscriber("customer_segmentation", task="segmentation.update_customer_segment"),
)


def subscriber_named(name: str) -> Subscriber:
    for subscriber in SUBSCRIBERS:
        if subscriber.name == name:
            return subscriber
    raise LookupError(f"no subscriber named {name!r}; known: {[s.name for s in SUBSCRIBERS]}")


def subscriber_for_queue(queue_name: str) -> Subscriber | None:
    return next((s for s in SUBSCRIBERS if s.queue_name == queue_name), None)


def celery_queues() -> tuple[Queue, ...]:
    return tuple(s.queue for s in SUBSCRIBERS)


class TopologyMismatch(RuntimeError):
    """The broker already has an entity declared with different arguments."""


def declare(connection: Connection) -> None:
    """Declare exchanges, queues and bindings idempotently on ``connection``.

    RabbitMQ refuses a redeclaration whose arguments differ (PRECONDITION_FAILED) and closes the
    channel; that is turned into a message naming the queue and the argument at fault.
    """
    for exchange in (EVENTS_EXCHANGE, DEAD_LETTER_EXCHANGE):
        _declare(connection, f"exchange {exchange.name!r}", lambda ch, e=exchange: e.declare(channel=ch))
    for subscriber in SUBSCRIBERS:
        for queue in (subscriber.dead_letter_queue, subscriber.queue):
            _declare(connection, f"queue {queue.name!r}", lambda ch, q=queue: q(ch).declare())
        channel = connection.default_channel
        subscriber.fanout_binding.bind(subscriber.queue(channel), channel=channel)


def _declare(connection: Connection, what: str, declare_on) -> None:
    try:
        declare_on(connection.default_channel)
    except connection.channel_errors as exc:
        if getattr(exc, "reply_code", None) == 406:  # PRECONDITION_FAILED
            raise TopologyMismatch(
                f"RabbitMQ already has {what} with different arguments: {exc.reply_text}. "
                "Delete it (or move to a new vhost) so it can be declared as "
                "marketplace/events/topology.py says."
            ) from exc
        raise
