import os
import threading

from celery import Celery
from celery.signals import task_prerun, worker_init, worker_process_init, worker_process_shutdown
from kombu import Producer, Queue

from marketplace import tracing
from marketplace.events import topology
from marketplace.internals import amqp as amqp_internals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
# Before any connection reads a message: no header frame may stop a reader (see amqp_internals.py).
amqp_internals.install()

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Periodic maintenance (retention: events/tasks.py; rate-limit counters: ratelimits/tasks.py) has a
# queue and a worker of its own, so it never waits behind a subscriber's backlog; `celery beat`
# sends it (settings.CELERY_BEAT_SCHEDULE).
MAINTENANCE_QUEUE = Queue(
    "marketplace.maintenance", durable=True, queue_arguments={"x-queue-type": topology.QUEUE_TYPE}
)
app.conf.task_queues = (*topology.celery_queues(), MAINTENANCE_QUEUE)
app.conf.task_routes = {
    "events.prune_events": {"queue": MAINTENANCE_QUEUE.name},
    "ratelimits.prune_counters": {"queue": MAINTENANCE_QUEUE.name},
}
app.autodiscover_tasks()


@worker_init.connect
def declare_topology(sender=None, **kwargs):
    """Workers declare the whole topology (bindings and retry queues too) before consuming."""
    from django.conf import settings

    with app.connection_for_write() as connection:
        topology.declare(connection, settings.SUBSCRIBER_RETRY_DELAYS)


@worker_process_init.connect
def start_tracing(**kwargs):
    """Each pool process traces on its own, after the fork (marketplace/tracing.py), as the
    service of the queue its worker consumes: marketplace-order_confirmation, ..."""
    queues = sorted(app.amqp.queues.consume_from or ())
    tracing.configure("+".join(name.removeprefix("marketplace.") for name in queues) or "worker")


@worker_process_shutdown.connect
def flush_traces(**kwargs):
    """A pool process ends without running exit hooks: export its last spans first."""
    tracing.flush()


_confirming = threading.local()


def confirming_producer() -> Producer:
    """A producer whose every publish waits for RabbitMQ's confirm, one per process and thread.

    For what must be safe in the broker before the message it replaces is acknowledged: retries,
    dead letters, replays. Celery's own connections publish without confirms, so that the task
    events Flower shows cost no round trip each in the worker's event loop.
    """
    producer = getattr(_confirming, "producer", None)
    if producer is None or _confirming.pid != os.getpid():
        connection = app.connection_for_write(
            transport_options={**app.conf.broker_transport_options, "confirm_publish": True}
        )
        producer = _confirming.producer = Producer(connection)
        _confirming.pid = os.getpid()
    return producer


@task_prerun.connect
def drop_broken_database_connections(**kwargs):
    """Workers keep their database connection across tasks (CELERY_DB_REUSE_MAX) instead of
    reconnecting for each one. One on which an error occurred (the database restarted) is
    checked and dropped if unusable before the next task; a healthy one costs no ping."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.errors_occurred:
            connection.close_if_unusable_or_obsolete()
