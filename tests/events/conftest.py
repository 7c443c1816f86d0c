"""Fixtures for the event bus tests: outbox rows made directly, and throwaway RabbitMQ vhosts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from django.utils import timezone

from marketplace.events.envelope import build_envelope
from marketplace.events.models import OutboxEvent
from tests.support.broker import add_vhost, delete_vhost


def order_placed_sample(order_id: int = 1) -> dict:
    """A schema-valid ``order.placed`` envelope that no order row stands behind."""
    now = timezone.now()
    return build_envelope(
        event_type="order.placed",
        version=1,
        occurred_at=now,
        correlation_id=f"test-{uuid.uuid4().hex[:12]}",
        data={
            "order_id": order_id,
            "status": "placed",
            "placed_at": now.isoformat().replace("+00:00", "Z"),
            "buyer": {"id": 1, "email": "buyer@example.com", "name": "Test Buyer"},
            "lines": [
                {
                    "product_id": 1,
                    "sku": "SKU-00001",
                    "name": "Hammer",
                    "seller_id": 1,
                    "quantity": 2,
                    "unit_price": "19.90",
                    "line_total": "39.80",
                }
            ],
            "total": "39.80",
            "currency": "EUR",
        },
    )


@pytest.fixture
def pending_events(db):
    """``pending_events(n)``: n unclaimed, unpublished outbox rows, as the relay finds them after a crash."""

    def make(count: int) -> list[OutboxEvent]:
        envelopes = [order_placed_sample(order_id=n + 1) for n in range(count)]
        return OutboxEvent.objects.bulk_create(
            OutboxEvent(event_id=envelope["id"], event_type=envelope["type"], envelope=envelope)
            for envelope in envelopes
        )

    return make


@dataclass(frozen=True)
class Vhost:
    name: str
    url: str


@pytest.fixture
def throwaway_vhost():
    """An empty RabbitMQ vhost of the test's own (deleted afterwards), for topologies nobody else may see."""
    name = f"marketplace-throwaway-{uuid.uuid4().hex[:10]}"
    try:
        yield Vhost(name=name, url=add_vhost(name))
    finally:
        delete_vhost(name)
