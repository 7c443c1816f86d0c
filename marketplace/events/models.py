from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxEvent(models.Model):
    """An event written in the same transaction as the change it describes (transactional outbox).

    A row is pending until the broker confirmed it; it is never deleted or expired by the relay.
    """

    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=100)
    envelope = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Whoever claims a row (the on-commit publisher or a relay) owns it until this moment.
    claimed_until = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["id"], name="outbox_pending_idx", condition=Q(published_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"

    @property
    def is_published(self) -> bool:
        return self.published_at is not None


class ProcessedEvent(models.Model):
    """Marks an event as handled by one subscriber; written in the transaction of its effect."""

    subscriber = models.CharField(max_length=100)
    event_id = models.UUIDField()
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "event_id"], name="processed_once_per_subscriber"),
        ]

    def __str__(self) -> str:
        return f"{self.subscriber}: {self.event_id}"


class FailedEventQuerySet(models.QuerySet["FailedEvent"]):
    """A failed event's statuses and every change of them (the recorder's own, which writes
    "failed" in its upsert, aside: events/dead_letters.py)."""

    def open(self) -> FailedEventQuerySet:
        """Failures still to handle: failed, or a replay requested."""
        return self.filter(status__in=FailedEvent.OPEN)

    def closed(self) -> FailedEventQuerySet:
        return self.filter(status__in=FailedEvent.CLOSED)

    def leaving_dead_letter_queue(self) -> FailedEventQuerySet:
        return self.filter(status__in=FailedEvent.LEAVES_DEAD_LETTER_QUEUE)

    def mark_replaying(self) -> int:
        return self.filter(status__in=FailedEvent.OPEN).update(status=FailedEvent.Status.REPLAYING)

    def mark_failed_again(self) -> int:
        """A replay that could not be sent: failed, as before."""
        return self.filter(status=FailedEvent.Status.REPLAYING).update(status=FailedEvent.Status.FAILED)

    def mark_archived(self) -> int:
        return self.filter(status__in=FailedEvent.OPEN).update(status=FailedEvent.Status.ARCHIVED)

    def mark_resolved(self) -> int:
        """A replay succeeded."""
        return self.filter(status__in=FailedEvent.OPEN).update(
            status=FailedEvent.Status.RESOLVED, resolved_at=timezone.now()
        )


class FailedEvent(models.Model):
    """What the admin shows of a dead letter: a message a subscriber gave up on (retries exhausted,
    a permanent failure, a delivery limit reached, or a message it could not read).

    A projection of the subscriber's dead-letter queue, written by ``record_dead_letters``; the
    message itself stays in that queue while this record is open (see events/dead_letters.py).
    """

    class Status(models.TextChoices):
        FAILED = "failed", "Failed"
        REPLAYING = "replaying", "Replay requested"
        RESOLVED = "resolved", "Resolved"
        ARCHIVED = "archived", "Archived"

    OPEN = (Status.FAILED, Status.REPLAYING)
    CLOSED = (Status.RESOLVED, Status.ARCHIVED)
    # Whose message compaction removes from the .dead queue: closed, or being replayed (a replay
    # sends the stored envelope, not the queued message).
    LEAVES_DEAD_LETTER_QUEUE = (*CLOSED, Status.REPLAYING)

    subscriber = models.CharField(max_length=100, db_index=True)
    event_id = models.UUIDField(null=True, blank=True, help_text="Empty when the message had no usable id.")
    event_type = models.CharField(max_length=100, blank=True)
    payload = models.JSONField(null=True, blank=True, help_text="The envelope, when it could be decoded.")
    raw_body = models.TextField(
        blank=True, help_text="The message body as text (NUL and invalid UTF-8 escaped), when it was not a valid event."
    )
    body = models.BinaryField(null=True, blank=True, help_text="The message body, byte for byte (up to 16 MiB).")
    body_size = models.PositiveBigIntegerField(default=0)
    body_digest = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of the body: identifies id-less messages."
    )
    content_type = models.CharField(max_length=100, blank=True)
    headers = models.JSONField(default=dict, blank=True, help_text="The dead letter's headers (x-death included).")
    dead_letter_key = models.CharField(max_length=64, blank=True, help_text="The last dead-lettering recorded.")
    in_dead_letter_queue = models.BooleanField(
        default=False, help_text="Its message is still in the dead-letter queue (removed once resolved or archived)."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.FAILED, db_index=True)
    exception_class = models.CharField(max_length=200, db_index=True)
    exception_message = models.TextField(blank=True)
    # Failures alike enough to share a cause: subscriber x exception class x this message with its
    # ids, numbers and URL paths masked (events/failure_groups.py). group_key hashes the three.
    message_pattern = models.CharField(max_length=500, blank=True)
    group_key = models.CharField(max_length=16, blank=True, db_index=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_failed_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = FailedEventQuerySet.as_manager()

    class Meta:
        ordering = ["-last_failed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "event_id"],
                name="one_failed_record_per_subscriber_event",
                condition=Q(event_id__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["subscriber", "body_digest"],
                name="one_failed_record_per_subscriber_idless_body",
                condition=Q(event_id__isnull=True),
            ),
        ]
        permissions = [("replay_failedevent", "Can replay failed events")]

    def __str__(self) -> str:
        return f"{self.subscriber}: {self.event_type or 'unreadable message'} {self.event_id or ''}"


class FailedEventReplayQuerySet(models.QuerySet["FailedEventReplay"]):
    def finish_pending(self, *, failed_event_id: int, succeeded: bool) -> int:
        """What came of the failed event's pending replay: the subscriber succeeded, or the event
        was dead-lettered again."""
        return self.filter(
            failed_event_id=failed_event_id,
            action=FailedEventReplay.Action.REPLAY,
            outcome=FailedEventReplay.Outcome.PENDING,
        ).update(
            outcome=FailedEventReplay.Outcome.SUCCEEDED if succeeded else FailedEventReplay.Outcome.FAILED,
            finished_at=timezone.now(),
        )


class FailedEventReplay(models.Model):
    """Audit trail: who asked for which failed event to be replayed, how, and what came of it."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed again"

    class Action(models.TextChoices):
        REPLAY = "replay", "Replay"
        ARCHIVE = "archive", "Archive"

    failed_event = models.ForeignKey(FailedEvent, on_delete=models.CASCADE, related_name="replays")
    action = models.CharField(max_length=10, choices=Action.choices, default=Action.REPLAY)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    via = models.CharField(
        max_length=20, choices=[("admin", "Admin"), ("admin-group", "Admin, whole group"), ("command", "Command line")]
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = FailedEventReplayQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"{self.action} of {self.failed_event_id} via {self.via}"


class DeliveryAttempt(models.Model):
    """One attempt of a subscriber at an event that did not simply succeed the first time: a
    failure (then retried, waited out or dead-lettered), or the success that followed failures or
    a replay. First-time successes are not recorded (ProcessedEvent has their time)."""

    class Outcome(models.TextChoices):
        RETRYING = "retrying", "Failed, retry scheduled"
        WAITING = "waiting", "Database unavailable, waiting"
        DEAD_LETTERED = "dead_lettered", "Failed, dead-lettered"
        SUCCEEDED = "succeeded", "Succeeded"

    subscriber = models.CharField(max_length=100)
    event_id = models.UUIDField(null=True, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(help_text="1 for the first delivery; retries and replays count on.")
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    worker = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    error = models.TextField(blank=True)
    replay_of = models.ForeignKey(
        FailedEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )

    class Meta:
        ordering = ["started_at"]
        indexes = [models.Index(fields=["subscriber", "event_id"], name="attempts_by_subscriber_event")]

    def __str__(self) -> str:
        return f"{self.subscriber} {self.event_id} attempt {self.attempt}: {self.outcome}"
