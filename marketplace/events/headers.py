"""The headers a message carries through its retries and onto its dead letter: the retry
state a subscriber keeps in the message (not in a database), and the failure the admin shows.

Owned here, read by the subscriber task base (events/subscriber.py), the worker's consumer, the
dead-letter recorder (events/dead_letters.py) and replays (events/services.py).
"""

from __future__ import annotations

import traceback as tb
import uuid
from datetime import UTC, datetime
from typing import Any

# Message headers a subscriber carries through its retries and onto its dead letter.
ATTEMPTS = "marketplace-attempts"
INFRA_WAITS = "marketplace-infra-waits"
WAITING_SINCE = "marketplace-waiting-since"
FIRST_FAILED_AT = "marketplace-first-failed-at"
LAST_FAILED_AT = "marketplace-last-failed-at"
EXCEPTION_CLASS = "marketplace-exception-class"
EXCEPTION_MESSAGE = "marketplace-exception-message"
TRACEBACK = "marketplace-traceback"
DEAD_LETTER_ID = "marketplace-dead-letter-id"
REPLAY_OF = "marketplace-replay-of"
PARK_REASON = "marketplace-park-reason"
# A parked message whose headers could not be written back carries their repr() here instead.
ORIGINAL_HEADERS = "marketplace-original-headers"
FAILURE_HEADERS = (FIRST_FAILED_AT, LAST_FAILED_AT, EXCEPTION_CLASS, EXCEPTION_MESSAGE, TRACEBACK, DEAD_LETTER_ID)

# AMQP sends all headers in one frame (128 KiB by default): keep the failure well inside it.
MAX_MESSAGE_CHARS = 4_000
MAX_TRACEBACK_CHARS = 32_000


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exception_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def failure_headers(
    *, exc: BaseException, traceback: str | None = None, attempts: int, first_failed_at: str | None = None
) -> dict[str, Any]:
    """What the admin shows of a failure, as message headers (strings and ints only)."""
    if traceback is None:
        traceback = "".join(tb.format_exception(exc))
    now = now_iso()
    return {
        ATTEMPTS: attempts,
        FIRST_FAILED_AT: first_failed_at or now,
        LAST_FAILED_AT: now,
        EXCEPTION_CLASS: exception_name(exc),
        EXCEPTION_MESSAGE: str(exc)[:MAX_MESSAGE_CHARS],
        TRACEBACK: traceback[-MAX_TRACEBACK_CHARS:],
        DEAD_LETTER_ID: str(uuid.uuid4()),
    }
