"""Failure groups: failed events alike enough to share a cause, handled together.

A group is subscriber x exception class x the exception message with what varies between
events masked (UUIDs, e-mail addresses, URL paths and queries, numbers), as ServicePulse groups
failed messages. An operator replays or archives a whole group once its cause is fixed; each
event is still replayed (and audited) on its own.

The class and message are the failure's root cause's. An exception that wraps others (several
sellers of one order not notified, say) names the one that decides on the first line of its
message, as ``root cause: <module.Class>: <message>`` (``root_cause_line``): one seller's 503 is
then one group whether the order had one seller or two. Any other message is its own root cause.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from django.contrib.postgres.aggregates import ArrayAgg
from django.db.models import Count, Max, Min, Q, TextField, Value
from django.db.models.functions import Concat

from marketplace.events.models import FailedEvent, FailedEventReplay

PATTERN_LENGTH = 500
ROOT_CAUSE_PREFIX = "root cause: "
_ROOT_CAUSE = re.compile(rf"{ROOT_CAUSE_PREFIX}(?P<exception_class>[\w.]+): (?P<message>.*)")
# A URL: its scheme and host (with the port) name the downstream and are kept; its path and query
# vary per resource and are masked, and so are credentials in it.
_URL = re.compile(r"\b(?P<scheme>https?://)(?P<userinfo>[^/\s'\"<>@]*@)?(?P<host>[^/\s'\"<>]+)(?P<rest>[^\s'\"<>]*)")
_MASKS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\d+"), "<n>"),
]


def root_cause_line(exc: BaseException) -> str:
    """The first line of a wrapping exception's message: the failure it is grouped by."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{ROOT_CAUSE_PREFIX}{type(exc).__module__}.{type(exc).__qualname__}: {first_line}"


def root_cause(*, exception_class: str, exception_message: str) -> tuple[str, str]:
    """The class and message of the failure that decides: the one the message's first line names
    as its root cause, if it does, else the failure itself."""
    found = _ROOT_CAUSE.fullmatch(exception_message.strip().split("\n", 1)[0]) if exception_message else None
    if found is None:
        return exception_class, exception_message
    return found["exception_class"], found["message"]


def message_pattern(message: str) -> str:
    """``message`` with its variable parts masked, so that one cause reads as one pattern."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    pattern, start = [], 0
    for url in _URL.finditer(line):
        pattern.append(_mask(line[start : url.start()]))
        userinfo = "<userinfo>@" if url["userinfo"] else ""
        path = "/<path>" if url["rest"].strip("/") else url["rest"]
        pattern.append(f"{url['scheme']}{userinfo}{url['host']}{path}")
        start = url.end()
    pattern.append(_mask(line[start:]))
    return "".join(pattern)[:PATTERN_LENGTH]


def _mask(text: str) -> str:
    for regex, mask in _MASKS:
        text = regex.sub(mask, text)
    return text


def group_key(*, subscriber: str, exception_class: str, pattern: str) -> str:
    return hashlib.sha256(f"{subscriber}\0{exception_class}\0{pattern}".encode()).hexdigest()[:16]


def grouping_fields(*, subscriber: str, exception_class: str, exception_message: str) -> dict[str, str]:
    """The FailedEvent fields that put a failure in its group: its root cause's, masked."""
    cause_class, cause_message = root_cause(exception_class=exception_class, exception_message=exception_message)
    pattern = message_pattern(cause_message)
    return {
        "message_pattern": pattern,
        "group_key": group_key(subscriber=subscriber, exception_class=cause_class, pattern=pattern),
    }


@dataclass(frozen=True)
class FailureGroup:
    key: str
    subscriber: str
    exception_class: str  # the root cause's
    message_pattern: str
    count: int
    first_seen: datetime
    last_seen: datetime
    failed: int = 0  # open members still to replay
    replaying: int = 0  # open members whose replay is under way
    wrapped_in: tuple[str, ...] = ()  # the classes that carried the root cause, when not itself

    @property
    def replayable(self) -> bool:
        return self.failed > 0

    @property
    def exception_name(self) -> str:
        return self.exception_class.rpartition(".")[2]

    @property
    def exception_module(self) -> str:
        return self.exception_class.rpartition(".")[0]

    @property
    def wrapped_in_names(self) -> list[str]:
        return [name.rpartition(".")[2] for name in self.wrapped_in]


def open_failure_groups(*, key: str | None = None) -> list[FailureGroup]:
    """Groups with failures still to handle (failed, or replay requested), largest first; only
    the group ``key`` when given."""
    failures = FailedEvent.objects.open()
    if key is not None:
        failures = failures.filter(group_key=key)
    rows = (
        failures.values("group_key", "subscriber", "message_pattern")
        .annotate(
            count=Count("id"),
            first_seen=Min("first_failed_at"),
            last_seen=Max("last_failed_at"),
            failed=Count("id", filter=Q(status=FailedEvent.Status.FAILED)),
            replaying=Count("id", filter=Q(status=FailedEvent.Status.REPLAYING)),
            classes=ArrayAgg("exception_class", distinct=True, default=Value([])),
            # Any one member names the group's root cause: class, newline, message.
            sample=Min(Concat("exception_class", Value("\n"), "exception_message", output_field=TextField())),
        )
        .order_by("-count", "-last_seen")
    )
    groups = []
    for row in rows:
        sample_class, _, sample_message = row["sample"].partition("\n")
        cause_class, _ = root_cause(exception_class=sample_class, exception_message=sample_message)
        groups.append(
            FailureGroup(
                key=row["group_key"],
                subscriber=row["subscriber"],
                exception_class=cause_class,
                message_pattern=row["message_pattern"],
                count=row["count"],
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                failed=row["failed"],
                replaying=row["replaying"],
                wrapped_in=tuple(name for name in sorted(row["classes"]) if name != cause_class),
            )
        )
    return groups


def failure_group(key: str) -> FailureGroup | None:
    return next(iter(open_failure_groups(key=key)), None)


@dataclass(frozen=True)
class ReplayProgress:
    """Where a group's replays requested since ``since`` are: each finishes when its subscriber
    succeeds (resolved) or dead-letters it again (failed again)."""

    requested: int
    succeeded: int
    failed_again: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed_again

    @property
    def done(self) -> bool:
        return self.finished >= self.requested

    def __str__(self) -> str:
        if not self.requested:
            return "no replay requested"
        again = f", {self.failed_again} failed again" if self.failed_again else ""
        state = "replayed" if self.done else "replaying"
        return f"{state}: {self.finished} of {self.requested} done ({self.succeeded} succeeded{again})"


def group_replay_progress(*, key: str, since: datetime | None = None) -> ReplayProgress:
    """The group's replays requested since ``since``; by default since the earliest one still
    pending (what is under way now), or none if nothing is."""
    replays = FailedEventReplay.objects.filter(failed_event__group_key=key, action=FailedEventReplay.Action.REPLAY)
    if since is None:
        since = replays.filter(outcome=FailedEventReplay.Outcome.PENDING).aggregate(since=Min("requested_at"))["since"]
        if since is None:
            return ReplayProgress(requested=0, succeeded=0, failed_again=0)
    counts = replays.filter(requested_at__gte=since).aggregate(
        requested=Count("id"),
        succeeded=Count("id", filter=Q(outcome=FailedEventReplay.Outcome.SUCCEEDED)),
        failed_again=Count("id", filter=Q(outcome=FailedEventReplay.Outcome.FAILED)),
    )
    return ReplayProgress(**counts)


def group_status_counts(key: str) -> dict[str, int]:
    """How many of the group's failed events are in each status, closed ones included."""
    rows = FailedEvent.objects.filter(group_key=key).values("status").annotate(count=Count("id"))
    return {status: 0 for status in FailedEvent.Status.values} | {row["status"]: row["count"] for row in rows}
