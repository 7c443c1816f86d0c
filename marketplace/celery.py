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
    """Workers declare the whole topology (including fanout bindings) before consuming."""
    with app.connection_for_write() as connection:
        topology.declare(connection)
