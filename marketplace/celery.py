import os

from celery import Celery
from celery.signals import worker_init

from marketplace.events import topology

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = topology.celery_queues()
app.autodiscover_tasks()


@worker_init.connect
def declare_topology(sender=None, **kwargs):
    """Workers declare the whole topology (bindings and retry queues too) before consuming."""
    from django.conf import settings

    with app.connection_for_write() as connection:
        topology.declare(connection, settings.SUBSCRIBER_RETRY_DELAYS)
