"""Fixtures for the rate-limit tests: small limits, set for one test."""

from __future__ import annotations

import time

import pytest

from marketplace.ratelimits.throttles import ORDERS, UNAUTHENTICATED
from tests.factories import BuyerFactory

HOUR = 3600


@pytest.fixture
def rate_limits(settings):
    """``rate_limits(orders="3/hour", unauthenticated=None)``: the limits for this test (None: none).

    Through DRF's settings, which DRF reloads when they change, as the throttles read them per request.
    """

    def set_limits(*, orders: str | None = None, unauthenticated: str | None = None) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {ORDERS: orders, UNAUTHENTICATED: unauthenticated},
        }

    return set_limits


@pytest.fixture(autouse=True)
def _not_at_the_end_of_an_hour():
    """The tests count within one hourly window: one ending mid-test would start the count again."""
    left = HOUR - time.time() % HOUR
    if left < 10:
        time.sleep(left + 0.1)


@pytest.fixture
def buyer(db):
    return BuyerFactory()


@pytest.fixture
def api(client_for, buyer):
    """The buyer's API client, with a token."""
    return client_for(buyer)
