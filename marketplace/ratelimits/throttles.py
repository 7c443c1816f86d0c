"""The API's rate limits as DRF throttles, whatever authentication class identified the request.

- **orders**: orders one buyer (``request.user.pk``) may place per window (OrderPlacementThrottle,
  on ``POST /api/orders/`` only).
- **unauthenticated**: requests without valid credentials one client address may make per window
  (UnauthenticatedThrottle, on every API view): no token, or a wrong one — a token guess counts.

Past either limit the API answers 429 with ``Retry-After``, the seconds left in the window
(marketplace.problems). The limits are DRF's ``DEFAULT_THROTTLE_RATES`` (settings:
``API_RATE_LIMIT_*``); ``None`` turns one off.

DRF checks throttles after authentication and permissions, so a request refused for its
credentials (401) never reaches them: the problem handler counts it through
``throttle_refused_credentials``. And an address past its limit is refused *everything* until its
window ends, requests with valid credentials too: otherwise a guesser past the limit would still
tell a right token (200) from a wrong one (429), and guess as fast as before.
"""

from __future__ import annotations

import ipaddress

from django.http import HttpRequest
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from marketplace.client_ip import client_ip
from marketplace.ratelimits import counters
from marketplace.ratelimits.rates import Rate, parse_rate

ORDERS = "orders"
UNAUTHENTICATED = "unauthenticated"
# Every client whose address cannot be read (a Unix socket has none) is counted as this one.
UNKNOWN_ADDRESS = "unknown"
# An IPv6 host usually holds a whole /64 and can pick any address in it: counted per /64, as one.
IPV6_CLIENT_PREFIX = 64


def configured_rate(scope: str) -> Rate | None:
    rate = api_settings.DEFAULT_THROTTLE_RATES.get(scope)
    return None if rate is None else parse_rate(str(rate))


def client_address(request: HttpRequest | Request) -> str:
    """Who an unauthenticated request is counted as: the address marketplace.client_ip finds (the
    rule login lockouts use too), as an IPv4 address or an IPv6 /64, or UNKNOWN_ADDRESS."""
    return client_identity(client_ip(request))


def client_identity(address: str | None) -> str:
    """``address`` as the throttles count it; never raises, whatever the bytes."""
    try:
        parsed = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return UNKNOWN_ADDRESS
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed.packed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed)


def _authenticated(request: Request) -> bool:
    return request.user is not None and request.user.is_authenticated


def _count_unauthenticated(request: Request, rate: Rate) -> counters.Verdict:
    """Count this request against its address, once however often it is asked."""
    verdict: counters.Verdict | None = getattr(request, "unauthenticated_verdict", None)
    if verdict is None:
        verdict = counters.count(scope=UNAUTHENTICATED, client=client_address(request), rate=rate)
        request.unauthenticated_verdict = verdict
    return verdict


def throttle_refused_credentials(request: Request) -> Throttled | None:
    """For a request refused for its credentials (none, or wrong): count it against its address,
    and the 429 to answer instead of the 401 once the address is past its limit."""
    rate = configured_rate(UNAUTHENTICATED)
    if rate is None:
        return None
    verdict = _count_unauthenticated(request, rate)
    return None if verdict.allowed else Throttled(wait=verdict.retry_after)


class _WindowThrottle(BaseThrottle):
    retry_after: int | None = None

    def wait(self) -> int | None:
        return self.retry_after

    def _decide(self, verdict: counters.Verdict) -> bool:
        self.retry_after = verdict.retry_after
        return verdict.allowed


class UnauthenticatedThrottle(_WindowThrottle):
    """Requests without valid credentials, per client address; every view's (DEFAULT_THROTTLE_CLASSES).

    Counts the unauthenticated requests a view lets in (the product list); refuses an authenticated
    request from an address already refused in this window, without counting it.
    """

    def allow_request(self, request: Request, view: object) -> bool:
        rate = configured_rate(UNAUTHENTICATED)
        if rate is None:
            return True
        if _authenticated(request):
            return self._decide(
                counters.refused_in_window(scope=UNAUTHENTICATED, client=client_address(request), rate=rate)
            )
        return self._decide(_count_unauthenticated(request, rate))


class OrderPlacementThrottle(_WindowThrottle):
    """Orders placed per buyer (every attempt counts: refused, replayed or invalid alike)."""

    def allow_request(self, request: Request, view: object) -> bool:
        rate = configured_rate(ORDERS)
        if rate is None or not _authenticated(request):
            return True  # the view refuses an anonymous order itself (401), counted per address
        return self._decide(counters.count(scope=ORDERS, client=str(request.user.pk), rate=rate))
