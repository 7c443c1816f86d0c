from django.conf import settings

from marketplace.celery import app
from marketplace.events import topology

# RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer timeout.
RABBITMQ_CONSUMER_TIMEOUT_SECONDS = 30 * 60


def test_every_subscriber_has_a_task_with_its_retry_policy_and_its_own_retry_queue():
    app.loader.import_default_modules()
    for subscriber in topology.SUBSCRIBERS:
        task = app.tasks[subscriber.task]
        policy = settings.SUBSCRIBER_RETRY[subscriber.name]
        assert task.subscriber == subscriber.name
        assert task.acks_late
        assert task.max_retries == policy["max_retries"]
        assert task.retry_backoff == policy["retry_backoff"]
        assert task.retry_jitter == policy["retry_jitter"]
        assert task.retry_kwargs == {"queue": subscriber.queue_name}
        # A retry waits unacknowledged in the worker: its longest wait must stay far below the timeout.
        assert policy["retry_backoff_max"] < RABBITMQ_CONSUMER_TIMEOUT_SECONDS / 2


def test_failures_are_rejected_to_the_dead_letter_exchange_not_acknowledged():
    assert app.conf.task_acks_late is True
    assert app.conf.task_acks_on_failure is False
    assert app.conf.task_acks_on_timeout is False
    assert app.conf.task_reject_on_worker_lost is True
