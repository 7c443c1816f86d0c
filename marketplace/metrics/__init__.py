"""Prometheus metrics: what our processes count, for /metrics (views.py) to add up.

Call sites use the functions below, one line each. They cost an increment in a memory-mapped file
(no database query, no broker round trip) and never raise: counting must never fail an order, a
publish or a task.

Every process of a deployment writes its counts to settings.PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode, see multiprocess.py): the web's /metrics reads them all,
so what a Celery pool process counts shows there like what a gunicorn worker counts. What is
cheaper to read than to count (outbox lag, queue depths, open failures) is read at scrape time
(collectors.py). docs/observability.md lists every metric.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from django.conf import settings
from prometheus_client import Counter, Histogram

from marketplace.events import topology
from marketplace.metrics import multiprocess

logger = logging.getLogger(__name__)

# From a few milliseconds (the on-commit publisher) to minutes (the relay, after a broker outage).
PUBLISH_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# Handlers send email (EMAIL_TIMEOUT 10 s) or call a webhook (SELLER_WEBHOOK_TIMEOUT 5 s).
HANDLER_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Instruments:
    orders_placed: Counter
    publish_latency: Histogram
    processed: Counter
    retried: Counter
    dead_lettered: Counter
    handler_duration: Histogram

    def collectors(self) -> list[Counter | Histogram]:
        return [getattr(self, field.name) for field in fields(self)]


_lock = threading.Lock()
_instruments: Instruments | None = None


def instruments() -> Instruments:
    """This process's metrics, created on first use, after multiprocess mode is set up.

    Not at import: Flower imports the tasks (and so this module) but must keep its own metrics in
    memory (see flower.py); and a Celery pool process opens its files only once it is forked.
    """
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                multiprocess.enable(settings.PROMETHEUS_MULTIPROC_DIR)
                _instruments = _create()
    return _instruments


def _create() -> Instruments:
    by_subscriber = ("subscriber",)
    # registry=None: /metrics reads these through the multiprocess files (or registers them itself
    # without a directory); the default registry is Flower's, which must not show them.
    created = Instruments(
        orders_placed=Counter(
            "marketplace_orders_placed", "Orders placed (committed), idempotent replays not counted.", registry=None
        ),
        publish_latency=Histogram(
            "marketplace_outbox_publish_latency_seconds",
            "From the event's occurred_at (set in the order's transaction) to the broker's publisher confirm, "
            "whether the on-commit publisher or the relay published it.",
            buckets=PUBLISH_LATENCY_BUCKETS,
            registry=None,
        ),
        processed=Counter(
            "marketplace_subscriber_events_processed",
            "Events a subscriber's task completed (duplicates and skipped types included).",
            by_subscriber,
            registry=None,
        ),
        retried=Counter(
            "marketplace_subscriber_events_retried",
            "Failed attempts sent to the subscriber's retry queues (downstream errors and database waits).",
            by_subscriber,
            registry=None,
        ),
        dead_lettered=Counter(
            "marketplace_subscriber_events_dead_lettered",
            "Events a subscriber gave up on and dead-lettered (permanent error or retries exhausted). "
            "Deliveries RabbitMQ dead-letters itself (delivery limit) are not counted here: see the "
            "dead-letter queue depth.",
            by_subscriber,
            registry=None,
        ),
        handler_duration=Histogram(
            "marketplace_subscriber_handler_duration_seconds",
            "Time a subscriber's task spent validating and handling one delivery, failures included.",
            by_subscriber,
            buckets=HANDLER_DURATION_BUCKETS,
            registry=None,
        ),
    )
    # Every subscriber's series exist from the start, at 0: rate() and absent-series alerts work
    # before its first event.
    for subscriber in topology.SUBSCRIBERS:
        for metric in (created.processed, created.retried, created.dead_lettered, created.handler_duration):
            metric.labels(subscriber=subscriber.name)
    return created


_warned: set[str] = set()


def _never_raises(record: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(record)
    def safely(*args: Any, **kwargs: Any) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            if record.__name__ not in _warned:  # once per process: the cause is the same every time
                _warned.add(record.__name__)
                logger.warning("metrics: %s failed; not counted", record.__name__, exc_info=True)

    return safely


@_never_raises
def count_order_placed() -> None:
    instruments().orders_placed.inc()


@_never_raises
def observe_publish_latency(envelope: dict[str, Any]) -> None:
    occurred_at = datetime.fromisoformat(envelope["occurred_at"]).timestamp()
    instruments().publish_latency.observe(max(0.0, time.time() - occurred_at))


@_never_raises
def count_processed(subscriber: str) -> None:
    instruments().processed.labels(subscriber=subscriber).inc()


@_never_raises
def count_retried(subscriber: str) -> None:
    instruments().retried.labels(subscriber=subscriber).inc()


@_never_raises
def count_dead_lettered(subscriber: str) -> None:
    instruments().dead_lettered.labels(subscriber=subscriber).inc()


@_never_raises
def _observe_handler_duration(subscriber: str, seconds: float) -> None:
    instruments().handler_duration.labels(subscriber=subscriber).observe(seconds)


@contextmanager
def timed_handler(subscriber: str) -> Iterator[None]:
    """Observe how long the block takes, whether it returns or raises (the exception propagates)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _observe_handler_duration(subscriber, time.perf_counter() - started)
