"""A rate limit as the settings write it: DRF's "N/period" ("20/minute"). Imported by the settings,
which refuse to load a malformed one: nothing here may read django.conf.settings."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

PERIOD_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE = re.compile(r"([0-9]{1,9})/([a-z]+)")


@dataclass(frozen=True)
class Rate:
    """At most ``requests`` per window of ``seconds``."""

    requests: int
    seconds: int


def parse_rate(text: str) -> Rate:
    """``"20/minute"`` → Rate(20, 60). Stricter than DRF, which reads only the period's first letter
    (so "20/month" would be 20 a minute): anything but the periods above is refused."""
    match = _RATE.fullmatch(text.strip().lower())
    if match is None or match[2] not in PERIOD_SECONDS or int(match[1]) < 1:
        raise ValueError(f"{text!r} is not a rate: expected N/second, N/minute, N/hour or N/day with N at least 1")
    return Rate(int(match[1]), PERIOD_SECONDS[match[2]])


def rate_setting(variable: str, value: str) -> str | None:
    """The value of a rate-limit variable for DRF's DEFAULT_THROTTLE_RATES: None (no limit) when
    empty; ImproperlyConfigured, naming the variable, when it is not a rate."""
    if not value.strip():
        return None
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{variable}: {exc}") from None
    return value.strip()
