"""Backfill: republish retained outbox events to ONE subscriber's queue.

For the gap a subscriber missed (its queue or its fanout binding was gone while events were
published): the events go through the default exchange straight to that subscriber's queue
(routing key = queue name), so no other subscriber sees them again. Subscribers dedupe by event id,
so a backfill that overlaps what the subscriber already handled, or runs twice, is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from kombu import Connection, Producer

from marketplace.events import topology
from marketplace.events.broker import event_message
from marketplace.events.models import OutboxEvent

# Every backfilled message carries this header (value true), so a subscriber or an operator can tell it apart.
BACKFILL_HEADER = "marketplace-backfill"
# Seconds to wait for the broker's confirm of one message before the backfill stops.
CONFIRM_TIMEOUT = 30.0


class BackfillError(RuntimeError):
    """The backfill stopped; the events before the failing one were published (and are safe to repeat)."""


@dataclass(frozen=True)
class BackfillResult:
    subscriber: str
    queue: str
    matched: int
    published: int
    first_id: int | None = None
    last_id: int | None = None


def backfill_events(
    *,
    subscriber: topology.Subscriber,
    since: datetime,
    until: datetime | None = None,
    event_types: list[str] | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    broker_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackfillResult:
    """Republish the outbox events created in [since, until) to ``subscriber``'s queue, by id.

    ``until`` defaults to now: events created later reach the subscriber through the fanout anyway.

    Rows are read in batches by id (keyset pagination: no long-lived cursor while the broker
    confirms), each message is confirmed by the broker, and ``progress(done, total)`` is called after
    every batch. With ``dry_run`` nothing is published; the matching events are only counted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    events = OutboxEvent.objects.filter(created_at__gte=since, created_at__lt=until or timezone.now())
    if event_types:
        events = events.filter(event_type__in=event_types)
    total = events.count()
    bounds = events.order_by("id").values_list("id", flat=True)
    first_id, last_id = bounds.first(), bounds.last()
    result = BackfillResult(subscriber.name, subscriber.queue_name, total, 0, first_id, last_id)
    if dry_run or not total:
        return result

    published = 0
    with Connection(broker_url or settings.BROKER_URL, transport_options={"confirm_publish": True}) as connection:
        channel: Any = connection.default_channel  # py-amqp's Channel: kombu's StdChannel stub lacks queue_declare
        try:
            channel.queue_declare(subscriber.queue_name, passive=True)
        except connection.channel_errors as exc:
            raise BackfillError(
                f"queue {subscriber.queue_name} does not exist ({exc}); run `manage.py setup_broker` first"
            ) from exc
        returned: list[str] = []
        producer = Producer(
            connection.default_channel,
            exchange=topology.DIRECT_TO_QUEUE,
            on_return=lambda exc, exchange, routing_key, message: returned.append(str(exc)),
        )
        for batch in _batches(events, batch_size):
            for outbox_id, envelope in batch:
                body, properties = event_message(envelope)
                headers = {**properties.pop("headers"), BACKFILL_HEADER: True}
                producer.publish(
                    body,
                    routing_key=subscriber.queue_name,
                    mandatory=True,
                    serializer=None,
                    headers=headers,
                    timeout=CONFIRM_TIMEOUT,
                    confirm_timeout=CONFIRM_TIMEOUT,
                    **properties,
                )
                if returned:
                    raise BackfillError(
                        f"outbox {outbox_id}: {subscriber.queue_name} did not take the event ({returned[0]}); "
                        f"{published} event(s) were published before it"
                    )
                published += 1
            if progress is not None:
                progress(published, total)
    return BackfillResult(subscriber.name, subscriber.queue_name, total, published, first_id, last_id)


def _batches(events: QuerySet[OutboxEvent], batch_size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    last_id = 0
    while True:
        batch = list(events.filter(id__gt=last_id).order_by("id").values_list("id", "envelope")[:batch_size])
        if not batch:
            return
        yield batch
        last_id = batch[-1][0]
