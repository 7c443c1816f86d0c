"""Fixtures for the API token tests."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import BuyerFactory

PASSWORD = "correct horse battery staple"


@pytest.fixture
def fast_password_hashing(settings):
    """Passwords are hashed slowly on purpose; these tests check many."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def buyer(db):
    return BuyerFactory()


@pytest.fixture
def buyer_with_password(db, fast_password_hashing):
    buyer = BuyerFactory()
    buyer.set_password(PASSWORD)
    buyer.save()
    return buyer


def with_token(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def authenticates(token: str) -> bool:
    """Whether ``token`` reads its user's orders (200) rather than being refused (401)."""
    status = with_token(token).get("/api/orders/").status_code
    assert status in (200, 401), status
    return status == 200
