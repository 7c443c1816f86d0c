"""Fixtures for the orders API tests (their helpers: tests/support/orders.py)."""

from __future__ import annotations

import pytest

from tests.factories import BuyerFactory


@pytest.fixture
def buyer(db):
    return BuyerFactory()


@pytest.fixture
def api(client_for, buyer):
    """The buyer's authenticated API client."""
    return client_for(buyer)
