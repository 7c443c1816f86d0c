from __future__ import annotations

from django.db import transaction

from marketplace.celery import app, confirming_producer
from marketplace.events import dead_letters, topology
from marketplace.events.models import FailedEvent, FailedEventReplay

REPLAYABLE = (FailedEvent.Status.FAILED, FailedEvent.Status.REPLAYING)


class NotReplayable(Exception):
    pass


def failed_event_replay(*, failed_event: FailedEvent, requested_by=None, via: str) -> None:
    """Send the event to its subscriber's own queue again (never through the fanout exchange).

    The replay takes the failure out of the dead-letter queue (the recorder removes its message
    there); the subscriber's success marks the record resolved, a new failure dead-letters it again
    and the recorder marks it failed with the new error. The subscriber dedupes by event id, so a
    replay never repeats an effect.
    """
    if failed_event.status not in REPLAYABLE:
        raise NotReplayable(f"failed event {failed_event.pk} is {failed_event.status}")
    if not isinstance(failed_event.payload, dict):
        raise NotReplayable(f"failed event {failed_event.pk} holds no decodable event to replay")
    subscriber = topology.subscriber_named(failed_event.subscriber)
    # Marked before sending: a fast success must find REPLAYING to resolve, not be overwritten by it.
    with transaction.atomic():
        FailedEvent.objects.filter(pk=failed_event.pk).update(status=FailedEvent.Status.REPLAYING)
        FailedEventReplay.objects.create(failed_event=failed_event, requested_by=requested_by, via=via)
    try:
        app.send_task(
            subscriber.task,
            args=[failed_event.payload],
            queue=subscriber.queue_name,
            headers={dead_letters.REPLAY_OF: str(failed_event.pk)},
            producer=confirming_producer(),
        )
    except Exception:
        FailedEvent.objects.filter(pk=failed_event.pk).update(status=FailedEvent.Status.FAILED)
        raise
    failed_event.status = FailedEvent.Status.REPLAYING


def failed_event_archive(*, failed_event: FailedEvent) -> None:
    """Stop tracking a failure; the recorder removes its message from the dead-letter queue."""
    FailedEvent.objects.filter(pk=failed_event.pk).update(status=FailedEvent.Status.ARCHIVED)
