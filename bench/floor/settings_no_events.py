"""The marketplace's settings with Celery task events off: what the Flower scenario compares."""

from marketplace.settings import *  # noqa: F403

CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_SEND_SENT_EVENT = False
