from django.conf import settings

from marketplace.celery import app
from marketplace.events import topology


def test_every_subscriber_has_a_task_and_a_retry_queue_for_each_wait_of_its_policy():
    app.loader.import_default_modules()
    for subscriber in topology.SUBSCRIBERS:
        task = app.tasks[subscriber.task]
        policy = settings.SUBSCRIBER_RETRY[subscriber.name]
        assert task.subscriber == subscriber.name
        assert task.acks_late
        waits = {min(policy["retry_backoff"] * 2**n, policy["retry_backoff_max"]) for n in range(policy["max_retries"])}
        assert set(settings.SUBSCRIBER_RETRY_DELAYS[subscriber.name]) == waits | {
            settings.SUBSCRIBER_INFRA_RETRY_SECONDS
        }
        assert all(wait >= 1 for wait in waits)  # no jitter: a wait never collapses to 0 s


def test_a_retry_queue_expires_back_into_its_own_subscriber_queue_only():
    subscriber = topology.subscriber_named("seller_notification")
    arguments = subscriber.retry_queue(8).queue_arguments
    assert subscriber.retry_queue(8).name == "marketplace.seller_notification.retry.8s"
    assert arguments["x-message-ttl"] == 8000
    assert arguments["x-dead-letter-exchange"] == ""  # the default exchange: straight to one queue
    assert arguments["x-dead-letter-routing-key"] == subscriber.queue_name
    assert arguments["x-dead-letter-strategy"] == "at-least-once"


def test_giving_up_dead_letters_first_so_celery_acknowledges_the_original():
    assert app.conf.task_acks_late is True
    assert app.conf.task_acks_on_failure is True
    assert app.conf.task_acks_on_timeout is False  # a task killed by a time limit is not acknowledged
    assert app.conf.task_reject_on_worker_lost is True
