"""Failure groups: failed events alike enough to share a cause, handled together.

A group is subscriber x exception class x the exception message with what varies between
events masked (UUIDs, e-mail addresses, URL paths and queries, numbers), as ServicePulse groups
failed messages. An operator replays or archives a whole group once its cause is fixed; each
event is still replayed (and audited) on its own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min

from marketplace.events.models import FailedEvent

# Failures still to handle: failed, or a replay requested.
OPEN = (FailedEvent.Status.FAILED, FailedEvent.Status.REPLAYING)

PATTERN_LENGTH = 500
_MASKS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<email>"),
    # Keep a URL's scheme and host (which downstream); its path and query vary per resource.
    (re.compile(r"\b(https?://[^/\s'\"<>]+)[^\s'\"<>]*"), r"\1/<path>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\d+"), "<n>"),
]


def message_pattern(message: str) -> str:
    """``message`` with its variable parts masked, so that one cause reads as one pattern."""
    pattern = message.strip().splitlines()[0] if message.strip() else ""
    for regex, mask in _MASKS:
        pattern = regex.sub(mask, pattern)
    return pattern[:PATTERN_LENGTH]


def group_key(*, subscriber: str, exception_class: str, pattern: str) -> str:
    return hashlib.sha256(f"{subscriber}\0{exception_class}\0{pattern}".encode()).hexdigest()[:16]


def grouping_fields(*, subscriber: str, exception_class: str, exception_message: str) -> dict[str, str]:
    """The FailedEvent fields that put a failure in its group."""
    pattern = message_pattern(exception_message)
    return {
        "message_pattern": pattern,
        "group_key": group_key(subscriber=subscriber, exception_class=exception_class, pattern=pattern),
    }


@dataclass(frozen=True)
class FailureGroup:
    key: str
    subscriber: str
    exception_class: str
    message_pattern: str
    count: int
    first_seen: datetime
    last_seen: datetime


def open_failure_groups(*, key: str | None = None) -> list[FailureGroup]:
    """Groups with failures still to handle (failed, or replay requested), largest first; only
    the group ``key`` when given."""
    failures = FailedEvent.objects.filter(status__in=OPEN)
    if key is not None:
        failures = failures.filter(group_key=key)
    rows = (
        failures.values("group_key", "subscriber", "exception_class", "message_pattern")
        .annotate(count=Count("id"), first_seen=Min("first_failed_at"), last_seen=Max("last_failed_at"))
        .order_by("-count", "-last_seen")
    )
    return [
        FailureGroup(
            key=row["group_key"],
            subscriber=row["subscriber"],
            exception_class=row["exception_class"],
            message_pattern=row["message_pattern"],
            count=row["count"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
        )
        for row in rows
    ]


def failure_group(key: str) -> FailureGroup | None:
    return next(iter(open_failure_groups(key=key)), None)
