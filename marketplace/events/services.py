from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from marketplace.celery import app, confirming_producer
from marketplace.events import headers as message_headers
from marketplace.events import topology
from marketplace.events import tracing as event_tracing
from marketplace.events.models import FailedEvent, FailedEventReplay


class NotReplayable(Exception):
    pass


def failed_event_replay(*, failed_event: FailedEvent, requested_by: User | None = None, via: str) -> None:
    """Send the event to its subscriber's own queue again (never through the fanout exchange).

    The replay takes the failure out of the dead-letter queue (the recorder removes its message
    there); the subscriber's success marks the record resolved, a new failure dead-letters it again
    and the recorder marks it failed with the new error. The subscriber dedupes by event id, so a
    replay never repeats an effect.

    With tracing on, the replay is a new trace (the operator's request, or one of its own) linked
    to the one the event failed in.
    """
    if failed_event.status not in FailedEvent.OPEN:
        raise NotReplayable(f"failed event {failed_event.pk} is {failed_event.status}")
    if not isinstance(failed_event.payload, dict):
        raise NotReplayable(f"failed event {failed_event.pk} holds no decodable event to replay")
    subscriber = topology.subscriber_named(failed_event.subscriber)
    # Marked before sending: a fast success must find REPLAYING to resolve, not be overwritten by it.
    with transaction.atomic():
        FailedEvent.objects.filter(pk=failed_event.pk).mark_replaying()
        FailedEventReplay.objects.create(failed_event=failed_event, requested_by=requested_by, via=via)
    try:
        with event_tracing.replaying(failed_event=failed_event, queue=subscriber.queue_name) as trace_headers:
            app.send_task(
                subscriber.task,
                # The id the event's first delivery had: Flower shows the replay as that task succeeding.
                task_id=subscriber.adopted_task_id(str(failed_event.payload.get("id"))),
                args=[failed_event.payload],
                queue=subscriber.queue_name,
                headers={message_headers.REPLAY_OF: str(failed_event.pk), **trace_headers},
                producer=confirming_producer(),
            )
    except Exception:
        FailedEvent.objects.filter(pk=failed_event.pk).mark_failed_again()
        raise
    failed_event.status = FailedEvent.Status.REPLAYING


def failed_event_archive(*, failed_event: FailedEvent, requested_by: User | None = None, via: str = "admin") -> None:
    """Stop tracking a failure; the recorder removes its message from the dead-letter queue."""
    with transaction.atomic():
        FailedEvent.objects.filter(pk=failed_event.pk).mark_archived()
        FailedEventReplay.objects.create(
            failed_event=failed_event,
            action=FailedEventReplay.Action.ARCHIVE,
            requested_by=requested_by,
            via=via,
            outcome=FailedEventReplay.Outcome.SUCCEEDED,
            finished_at=timezone.now(),
        )
    failed_event.status = FailedEvent.Status.ARCHIVED


def replay_finished(*, failed_event_id: int, succeeded: bool) -> None:
    """Record what came of the failed event's pending replay."""
    FailedEventReplay.objects.finish_pending(failed_event_id=failed_event_id, succeeded=succeeded)


def _members(key: str, statuses: Iterable[str]) -> Iterator[FailedEvent]:
    yield from FailedEvent.objects.filter(group_key=key, status__in=statuses).order_by("id").iterator(chunk_size=200)


@dataclass
class GroupOutcome:
    done: int = 0
    skipped: int = 0


def failure_group_steps(*, key: str, action: str, requested_by: User | None = None) -> Iterator[GroupOutcome]:
    """Replay (the failed members not already replaying) or archive (every open member) of a
    failure group, one event at a time, each audited on its own; yields the running tally."""
    outcome = GroupOutcome()
    statuses = [FailedEvent.Status.FAILED] if action == "replay" else FailedEvent.OPEN
    for failed_event in _members(key, statuses):
        if action == "replay":
            try:
                failed_event_replay(failed_event=failed_event, requested_by=requested_by, via="admin-group")
                outcome.done += 1
            except NotReplayable:
                outcome.skipped += 1
        else:
            failed_event_archive(failed_event=failed_event, requested_by=requested_by, via="admin-group")
            outcome.done += 1
        yield outcome


def failure_group_apply(*, key: str, action: str, requested_by: User | None = None) -> GroupOutcome:
    """failure_group_steps run to the end: the final tally."""
    outcome = GroupOutcome()
    for outcome in failure_group_steps(key=key, action=action, requested_by=requested_by):  # noqa: B007
        pass
    return outcome
