from django.db import models


class RateLimitCounter(models.Model):
    """The requests one client made in the current window of one rate limit.

    One row per (scope, client), reused from one window to the next (counters.py), so the table
    holds a row per client seen since the last prune, not one per client and window. UNLOGGED (see
    the migration): a crash or a failover empties it, which only restarts every window.
    """

    pk = models.CompositePrimaryKey("scope", "client")
    # The limit counted: "orders" or "unauthenticated" (DRF's DEFAULT_THROTTLE_RATES keys).
    scope = models.CharField(max_length=32)
    # Who is counted: a buyer's id, or a client address (an IPv4 address or an IPv6 /64).
    client = models.CharField(max_length=64)
    window_ends_at = models.DateTimeField()
    hits = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.scope} {self.client}: {self.hits} until {self.window_ends_at.isoformat()}"
