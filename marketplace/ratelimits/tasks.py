"""Periodic maintenance of the rate limits, sent by `celery beat` (settings.CELERY_BEAT_SCHEDULE) to
the maintenance queue and worker (marketplace/celery.py)."""

import logging

from django.conf import settings

from marketplace.celery import app
from marketplace.ratelimits import counters

logger = logging.getLogger(__name__)


# Acknowledged on receipt, as events.prune_events: a run lost with its worker is made up by the next.
@app.task(name="ratelimits.prune_counters", acks_late=False, ignore_result=True)
def prune_counters() -> None:
    """Delete the counters of windows that have ended (one row per client seen since the last run)."""
    deleted = counters.prune_ended_windows(batch_size=settings.RETENTION_BATCH_SIZE)
    logger.info("rate limits: %d counters of ended windows deleted", deleted)
