"""The client's address behind the TLS-terminating proxy (settings.TRUSTED_PROXY_COUNT).

Each trusted proxy appends the address it was reached from to X-Forwarded-For, so with N of them
the client is the N-th entry from the right; whatever the client itself put to the left is ignored.
Login lockouts (marketplace/lockout.py) and the API's rate limits (marketplace/ratelimits/) count
clients by it; DRF's own throttles apply the same rule through NUM_PROXIES.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, normalised; the connection's own when the header cannot be trusted."""
    peer: str | None = request.META.get("REMOTE_ADDR")
    proxies: int = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return peer
    hops = [hop.strip() for hop in forwarded.split(",")]
    if len(hops) < proxies:
        # Fewer hops than proxies: the request did not come the way the proxies send it, and
        # every entry may be the client's own. Its peer is the one address it cannot choose.
        return peer
    try:
        return str(ipaddress.ip_address(hops[-proxies]))
    except ValueError:
        return peer
