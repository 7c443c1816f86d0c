"""Gauges read when /metrics is scraped, from where the state already is.

The outbox and the failure records are in PostgreSQL, the queue depths in RabbitMQ: reading them
once per scrape (every 15 s) costs a few indexed queries and passive queue declarations, where
keeping them as counters would cost work on every event and drift from the truth.

A source that cannot be read leaves its gauges out of the scrape (rather than reporting zeros
that would silence alerts) and sets ``marketplace_metrics_source_up{source=...}`` to 0.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from django.conf import settings
from django.db.models import Count
from kombu import Connection
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from marketplace.events import topology
from marketplace.events.broker import connect_once
from marketplace.events.models import FailedEvent, OutboxEvent
from marketplace.events.outbox import outbox_lag_seconds

logger = logging.getLogger(__name__)


class StateCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "marketplace_metrics_source_up",
            "1 if /metrics could read this source at this scrape; 0 if not, and its gauges are missing.",
            labels=["source"],
        )
        sources: list[tuple[str, Callable[[], Iterable[Metric]]]] = [
            ("database", database_gauges),
            ("broker", broker_gauges),
        ]
        for source, read in sources:
            try:
                families = list(read())
            except Exception as exc:
                logger.warning("metrics: could not read the %s: %s: %s", source, type(exc).__name__, exc)
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
                yield from families
        yield up


def database_gauges() -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "marketplace_outbox_pending_events",
        "Outbox events not published yet (the on-commit publisher's in flight, and the relay's backlog).",
        value=OutboxEvent.objects.filter(published_at__isnull=True).count(),
    )
    yield GaugeMetricFamily(
        "marketplace_outbox_lag_seconds",
        "Age of the oldest unpublished outbox event, 0 when there is none (as /healthz shows).",
        value=outbox_lag_seconds(),
    )
    groups = (
        FailedEvent.objects.open()
        .values_list("subscriber", "exception_class")
        .annotate(count=Count("id"))
        .order_by()  # no ORDER BY: the model's ordering would join the GROUP BY
    )
    per_subscriber = Counter({subscriber.name: 0 for subscriber in topology.SUBSCRIBERS})
    by_exception = GaugeMetricFamily(
        "marketplace_failed_events_open_by_exception",
        "Open failed events (failed or replaying) per subscriber and exception class.",
        labels=["subscriber", "exception_class"],
    )
    for subscriber, exception_class, count in groups:
        by_exception.add_metric([subscriber, exception_class], count)
        per_subscriber[subscriber] += count
    per_subscriber_family = GaugeMetricFamily(
        "marketplace_failed_events_open",
        "Open failed events (failed or replaying) per subscriber: what the admin shows as failed events.",
        labels=["subscriber"],
    )
    for subscriber, count in sorted(per_subscriber.items()):
        per_subscriber_family.add_metric([subscriber], count)
    yield per_subscriber_family
    yield by_exception


def broker_gauges() -> list[Metric]:
    dead = GaugeMetricFamily(
        "marketplace_dead_letter_queue_messages",
        "Messages in the subscriber's dead-letter queue (its open failures, once the recorder has run).",
        labels=["subscriber"],
    )
    ready = GaugeMetricFamily(
        "marketplace_subscriber_queue_messages",
        "Messages waiting in the subscriber's queue (not yet delivered to a worker).",
        labels=["subscriber"],
    )
    consumers = GaugeMetricFamily(
        "marketplace_subscriber_queue_consumers", "Workers consuming the subscriber's queue.", labels=["subscriber"]
    )
    timeout = settings.EVENTS_PUBLISH_TIMEOUT
    with Connection(
        settings.BROKER_URL,
        connect_timeout=timeout,
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
        heartbeat=0,
    ) as connection:
        connect_once(connection)
        for subscriber in topology.SUBSCRIBERS:
            queue = _declare_passive(connection, subscriber.queue_name)
            if queue is not None:
                ready.add_metric([subscriber.name], queue.message_count)
                consumers.add_metric([subscriber.name], queue.consumer_count)
            dead_letter_queue = _declare_passive(connection, subscriber.dead_letter_queue_name)
            if dead_letter_queue is not None:
                dead.add_metric([subscriber.name], dead_letter_queue.message_count)
        families = [dead, ready, consumers]
        for name, metric, documentation in (
            (
                topology.RECORDER_QUEUE_NAME,
                "marketplace_dead_letter_recorder_inbox_messages",
                "Dead letters waiting for the recorder (a FailedEvent each once recorded); a backlog that "
                "stays means no recorder runs.",
            ),
            (
                topology.PARKED_QUEUE_NAME,
                "marketplace_parked_dead_letters",
                "Dead letters the recorder could not record at all, set aside with the reason in a header: "
                "each needs a person (RabbitMQ management UI, queue marketplace.dead-letter.parked).",
            ),
        ):
            queue = _declare_passive(connection, name)
            if queue is not None:
                families.append(GaugeMetricFamily(metric, documentation, value=queue.message_count))
    return families


def _declare_passive(connection: Connection, name: str):
    """The queue's (name, message count, consumer count), or None if it does not exist (the
    topology check in /healthz reports that; a missing queue must not hide the others)."""
    channel = connection.channel()
    try:
        return channel.queue_declare(queue=name, passive=True)
    except connection.channel_errors:
        return None
    finally:
        with contextlib.suppress(Exception):  # the broker closed it already (404)
            channel.close()
