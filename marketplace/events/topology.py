"""The whole messaging topology, declared once.

    publishers ──► marketplace.events (fanout)
                    ├──► marketplace.order_confirmation ──(dead letters)──► marketplace.dead-letter (direct)
                    ├──► marketplace.seller_notification        │    ├──► marketplace.<subscriber>.dead
                    ├──► marketplace.customer_segmentation      │    └──► marketplace.dead-letter.recorder
                    └──► marketplace.loyalty_rewards            │
                              ▲                                 │
                              └── marketplace.<subscriber>.retry.<N>s (TTL N s, expires back into the queue)

(The publishers: the order service, and any subscriber that emits events of its own through the
outbox, as customer_segmentation does.)

Every subscriber queue receives each event from the fanout. Retries wait in the subscriber's own
TTL retry queue (not unacknowledged in a worker) and expire back into that subscriber's queue, so
they never pass through the fanout again. Replays and backfills are published to the subscriber
queue through the default exchange (routing key = queue name).

Subscriber, retry and dead-letter queues are quorum queues: replicated on a cluster, with a
delivery limit (a message that crashes its worker every time is dead-lettered instead of looping)
and at-least-once dead-lettering (a message is removed from its queue only once the dead-letter
queue has confirmed it). Every dead letter is routed twice: to the subscriber's ``.dead`` queue,
which holds it until the failure is resolved or archived, and to the recorder's queue, from which
``manage.py record_dead_letters`` writes the FailedEvent row the admin shows.

Names are fixed; isolation between environments (tests, staging) comes from RabbitMQ vhosts.
This module imports nothing from Django so that settings, Celery and scripts can all use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kombu import Connection, Exchange, Queue, binding

EVENTS_EXCHANGE = Exchange("marketplace.events", type="fanout", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("marketplace.dead-letter", type="direct", durable=True)
# Celery publishes retries and replays here with routing key = the subscriber's queue name.
DIRECT_TO_QUEUE = Exchange("", type="direct")

QUEUE_TYPE = "quorum"
ADOPTION_NAMESPACE = uuid.UUID("8a4c2f8e-5b1d-4f57-9a43-6c1f0f7d2b11")
# A message delivered this many times without being acknowledged (its worker crashed or was
# killed each time) is dead-lettered with reason "delivery_limit".
DELIVERY_LIMIT = 5
RECORDER_QUEUE_NAME = "marketplace.dead-letter.recorder"
# Where the recorder sets aside a dead letter it cannot record at all (the database refuses even
# its plainest record, or it names no subscriber), so that it never blocks the ones behind it.
PARKED_QUEUE_NAME = "marketplace.dead-letter.parked"
# Dead-lettering from these queues is confirmed by the target queue before the source drops the
# message (RabbitMQ needs overflow=reject-publish for that strategy).
AT_LEAST_ONCE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class Subscriber:
    """One independent consumer of every event: its own queue, worker and dead-letter queue."""

    name: str
    task: str
    # Event types this subscriber acts on; others reaching its queue are acknowledged and skipped.
    event_types: frozenset[str] = frozenset({"order.placed"})
    # Event types its handlers publish (through the outbox), for the AsyncAPI document.
    emits: frozenset[str] = frozenset()
    # Dotted path of ``f(envelope) -> list[(label, admin URL)]``: what handling an event produced,
    # for the operator's trace view (imported only there, so this module imports no app).
    effects: str = ""

    @property
    def queue_name(self) -> str:
        return f"marketplace.{self.name}"

    def adopted_task_id(self, event_id: str) -> str:
        """The Celery task id of this subscriber's handling of an event, the same for every
        delivery and replay of it, so Flower shows one task."""
        return str(uuid.uuid5(ADOPTION_NAMESPACE, f"{self.name}:{event_id}"))

    @property
    def dead_letter_queue_name(self) -> str:
        return f"{self.queue_name}.dead"

    @property
    def queue(self) -> Queue:
        """The subscriber's queue, bound to the fanout: whoever declares it (a worker at start and
        on every reconnect, setup_broker, a publisher) also restores the binding."""
        return Queue(
            self.queue_name,
            durable=True,
            bindings=[self.fanout_binding],
            queue_arguments={
                "x-queue-type": QUEUE_TYPE,
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                "x-dead-letter-routing-key": self.dead_letter_queue_name,
                **AT_LEAST_ONCE_DEAD_LETTERING,
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

    def retry_queue_name(self, delay_seconds: int) -> str:
        return f"{self.queue_name}.retry.{delay_seconds}s"

    def retry_queue(self, delay_seconds: int) -> Queue:
        """Where a retry waits ``delay_seconds`` before it expires back into the subscriber's queue.

        One queue per delay: a queue-wide TTL never holds a short wait behind a long one.
        """
        return Queue(
            self.retry_queue_name(delay_seconds),
            durable=True,
            queue_arguments={
                "x-queue-type": QUEUE_TYPE,
                "x-message-ttl": delay_seconds * 1000,
                "x-dead-letter-exchange": DIRECT_TO_QUEUE.name,
                "x-dead-letter-routing-key": self.queue_name,
                **AT_LEAST_ONCE_DEAD_LETTERING,
            },
        )


# Adding a subscriber: a handler, a task named here, and this entry. Nothing in orders/ changes.
SUBSCRIBERS: tuple[Subscriber, ...] = (
    Subscriber(
        "order_confirmation",
        task="notifications.send_order_confirmation",
        event_types=frozenset({"order.placed", "order.cancelled"}),
        effects="notifications.selectors.confirmation_effects",
    ),
    Subscriber(
        "seller_notification",
        task="notifications.notify_sellers",
        event_types=frozenset({"order.placed", "order.cancelled"}),
        effects="notifications.selectors.seller_effects",
    ),
    Subscriber(
        "customer_segmentation",
        task="segmentation.update_customer_segment",
        event_types=frozenset({"order.placed", "order.cancelled"}),
        emits=frozenset({"customer.segment_changed"}),
        effects="segmentation.selectors.profile_effects",
    ),
    Subscriber(
        "loyalty_rewards",
        task="loyalty.send_reward_code",
        event_types=frozenset({"customer.segment_changed"}),
        effects="loyalty.selectors.reward_effects",
    ),
)


def subscribers_of(event_type: str) -> tuple[Subscriber, ...]:
    """The subscribers that act on ``event_type`` (every other one acknowledges and skips it)."""
    return tuple(s for s in SUBSCRIBERS if event_type in s.event_types)


def subscriber_named(name: str) -> Subscriber:
    for subscriber in SUBSCRIBERS:
        if subscriber.name == name:
            return subscriber
    raise LookupError(f"no subscriber named {name!r}; known: {[s.name for s in SUBSCRIBERS]}")


def subscriber_for_queue(queue_name: str) -> Subscriber | None:
    return next((s for s in SUBSCRIBERS if s.queue_name == queue_name), None)


def subscriber_for_dead_letter_queue(queue_name: str) -> Subscriber | None:
    return next((s for s in SUBSCRIBERS if s.dead_letter_queue_name == queue_name), None)


def recorder_queue() -> Queue:
    """The failure recorder's inbox: a copy of every dead letter of every subscriber."""
    return Queue(
        RECORDER_QUEUE_NAME,
        durable=True,
        bindings=[binding(DEAD_LETTER_EXCHANGE, routing_key=s.dead_letter_queue_name) for s in SUBSCRIBERS],
        queue_arguments={"x-queue-type": QUEUE_TYPE},
    )


def parked_queue() -> Queue:
    """Published to through the default exchange (routing key = its name); nothing routes here."""
    return Queue(PARKED_QUEUE_NAME, durable=True, queue_arguments={"x-queue-type": QUEUE_TYPE})


def celery_queues() -> tuple[Queue, ...]:
    return tuple(s.queue for s in SUBSCRIBERS)


def retry_delay(attempt: int, *, retry_backoff: int, retry_backoff_max: int, **_: object) -> int:
    """The wait (seconds) before retry ``attempt`` (from 0): backoff * 2**attempt, capped; never 0."""
    delay: int = max(1, min(retry_backoff * 2**attempt, retry_backoff_max))
    return delay


def retry_delays(*, max_retries: int, **policy: int) -> tuple[int, ...]:
    """The distinct waits of a policy: one retry queue each."""
    return tuple(sorted({retry_delay(attempt, **policy) for attempt in range(max_retries)}))


class TopologyMismatch(RuntimeError):
    """The broker already has an entity declared with different arguments."""


def declare(connection: Connection, retry_delays: dict[str, tuple[int, ...]] | None = None) -> None:
    """Declare exchanges, queues and bindings idempotently on ``connection``.

    ``retry_delays`` maps a subscriber name to the waits of its retry policy (see retry_delays());
    their retry queues are declared too. RabbitMQ refuses a redeclaration whose arguments differ
    (PRECONDITION_FAILED) and closes the channel; that is turned into a message naming the queue
    and the argument at fault.
    """
    for exchange in (EVENTS_EXCHANGE, DEAD_LETTER_EXCHANGE):
        _declare(connection, f"exchange {exchange.name!r}", lambda ch, e=exchange: e.declare(channel=ch))
    for queue in all_queues(retry_delays):
        _declare(connection, f"queue {queue.name!r}", lambda ch, q=queue: q(ch).declare())


def _declare(connection: Connection, what: str, declare_on: Callable[..., object]) -> None:
    try:
        declare_on(connection.default_channel)
    except connection.channel_errors as exc:
        if getattr(exc, "reply_code", None) == 406:  # PRECONDITION_FAILED
            raise TopologyMismatch(
                f"RabbitMQ already has {what} with different arguments: {exc.reply_text}. "  # type: ignore[attr-defined]  # an amqp ChannelError
                "Delete it (or move to a new vhost) so it can be declared as "
                "marketplace/events/topology.py says."
            ) from exc
        raise


def all_queues(retry_delays: dict[str, tuple[int, ...]] | None = None) -> list[Queue]:
    """Every queue declare() declares, in the same order: what checks and migrations compare with."""
    queues = [recorder_queue(), parked_queue()]
    for subscriber in SUBSCRIBERS:
        queues += [subscriber.dead_letter_queue, subscriber.queue]
        queues += [subscriber.retry_queue(delay) for delay in (retry_delays or {}).get(subscriber.name, ())]
    return queues


def queue_bindings(queue: Queue) -> set[tuple[str, str]]:
    """(exchange, routing key) of every binding that declaring ``queue`` creates."""
    pairs = {(b.exchange.name, b.routing_key or "") for b in queue.bindings}  # type: ignore[union-attr]  # each binding here names its exchange
    if queue.exchange is not None and queue.exchange.name:
        pairs.add((queue.exchange.name, queue.routing_key or ""))
    return pairs
