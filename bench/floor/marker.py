"""The exactly-once floor of a drain: the marketplace's own worker runtime (its Celery app and
settings: acks late, prefetch 1, task events, kept database connections) running a task whose
only work is what every subscriber must do at least, claiming the event's marker in a
transaction of its own (``claim_event``). No schema validation, no handler, no downstream.

Run like a floor worker: ``celery -A bench.floor.marker worker -Q bench.floor.<subscriber>``.
What it drains against the no-op floor bounds what any subscriber of ours can reach.
"""

from __future__ import annotations

from bench.broker import floor_queues
from bench.config import MARKER_SUBSCRIBER, MARKER_TASK
from marketplace.celery import app

app.conf.task_queues = (*app.conf.task_queues, *floor_queues())


@app.task(name=MARKER_TASK)
def claim_marker(event: dict) -> None:
    # Imported here: the worker loads this module before Django's app registry is ready.
    from django.db import transaction

    from marketplace.events.subscriber import claim_event

    with transaction.atomic():
        claim_event(subscriber=MARKER_SUBSCRIBER, event_id=event["id"])
