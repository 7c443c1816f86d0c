"""Celery tasks of the event bus itself: periodic maintenance, sent by `celery beat`
(settings.CELERY_BEAT_SCHEDULE) to the maintenance queue and worker (marketplace/celery.py)."""

import logging

from marketplace.celery import app
from marketplace.events import retention

logger = logging.getLogger(__name__)


# Acknowledged on receipt, not after the run (the project's default): a first run over a large
# table can outlast RabbitMQ's consumer timeout, and a run lost with its worker is made up by the
# next one. Pruning is idempotent and safe to run twice at once.
@app.task(name="events.prune_events", acks_late=False, ignore_result=True)
def prune_events() -> None:
    """Delete published outbox rows, dedupe markers and closed failures past their retention."""
    result = retention.prune_events()
    for table in result.tables:
        logger.info("retention: %d %s deleted (older than %s)", table.deleted, table.table, table.cutoff.isoformat())
