"""The counts behind the rate limits, in PostgreSQL: one atomic statement per check.

A fixed window per limit, on the database's clock: a "20/minute" limit counts from :00 to :00 of
every minute, the same window for every web process whatever its host's clock says. A check is a
single ``INSERT ... ON CONFLICT DO UPDATE``: the row lock makes concurrent checks of one client
take turns, each one sees the count the previous one left, and so at most N requests of a window
are ever told yes, however many processes ask at once. The client's row is reused from window to
window (a check in a later window starts it again at 1), so the table holds one row per client
seen since the last prune (``prune_ended_windows``, nightly on the maintenance worker).

The checks run outside any transaction of the request's (throttles run before the view): each one
commits at once, and a refused request is counted too.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from marketplace.ratelimits.rates import Rate

# The end of the current window: windows of `seconds` counted from the Unix epoch. A request that
# waited for the row lock past the end of its window counts in the next one (GREATEST): a late
# check can only make a count larger, never start an earlier window again.
_COUNT = """
INSERT INTO ratelimits_ratelimitcounter AS counter (scope, client, window_ends_at, hits)
VALUES (
    %(scope)s,
    %(client)s,
    to_timestamp((floor(extract(epoch FROM clock_timestamp()) / %(seconds)s) + 1) * %(seconds)s),
    1
)
ON CONFLICT (scope, client) DO UPDATE SET
    hits = CASE WHEN EXCLUDED.window_ends_at > counter.window_ends_at THEN 1 ELSE counter.hits + 1 END,
    window_ends_at = GREATEST(EXCLUDED.window_ends_at, counter.window_ends_at)
RETURNING hits, ceil(extract(epoch FROM window_ends_at - clock_timestamp()))::integer
"""

_READ = """
SELECT hits, ceil(extract(epoch FROM window_ends_at - clock_timestamp()))::integer
FROM ratelimits_ratelimitcounter
WHERE scope = %(scope)s AND client = %(client)s AND window_ends_at > clock_timestamp()
"""

_PRUNE = """
DELETE FROM ratelimits_ratelimitcounter
WHERE (scope, client) IN (
    SELECT scope, client FROM ratelimits_ratelimitcounter
    WHERE window_ends_at <= clock_timestamp()
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    # Seconds until the window ends (at least 1): what Retry-After says when refused.
    retry_after: int


def count(*, scope: str, client: str, rate: Rate) -> Verdict:
    """Count one request of ``client`` against ``rate``; allowed while the window's count is within it."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNT, {"scope": scope, "client": client, "seconds": rate.seconds})
        hits, seconds_left = cursor.fetchone()
    return Verdict(allowed=hits <= rate.requests, retry_after=max(1, seconds_left))


def refused_in_window(*, scope: str, client: str, rate: Rate) -> Verdict:
    """Whether ``client`` has already been refused in the current window, without counting."""
    with connection.cursor() as cursor:
        cursor.execute(_READ, {"scope": scope, "client": client})
        row = cursor.fetchone()
    if row is None:
        return Verdict(allowed=True, retry_after=rate.seconds)
    hits, seconds_left = row
    return Verdict(allowed=hits <= rate.requests, retry_after=max(1, seconds_left))


def prune_ended_windows(*, batch_size: int) -> int:
    """Delete the rows whose window has ended, ``batch_size`` per transaction; the number deleted.

    A row a check holds at that moment is skipped (its client is active: the check moves its window
    on anyway). Safe while the API runs, and concurrently with itself.
    """
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_PRUNE, {"batch_size": batch_size})
            batch = cursor.rowcount
        deleted += batch
        if batch < batch_size:
            return deleted
