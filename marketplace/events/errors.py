"""The failures a subscriber's handler raises to say what kind they are: retried, or not."""

from __future__ import annotations

import httpx


class TransientDownstreamError(Exception):
    """A downstream answered 'try again later' (HTTP 5xx, 429): worth retrying."""


# Worth retrying: the network, SMTP (smtplib errors are OSErrors), HTTP transport errors and
# 5xx answers. Everything else fails at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, httpx.TransportError, TransientDownstreamError)
