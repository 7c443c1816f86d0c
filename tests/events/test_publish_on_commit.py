"""An order placed through the API is published once, after commit, to every queue bound to the exchange."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from jsonschema import Draft202012Validator, FormatChecker

from marketplace.events.envelope import SCHEMA_DIR, validate_envelope
from marketplace.events.models import OutboxEvent
from marketplace.events.outbox import enqueue_event, on_commit_publisher
from orders.models import Order
from orders.services import InsufficientStock, LineRequest, order_place
from tests.events.conftest import order_placed_sample
from tests.factories import BuyerFactory, ProductFactory, SellerFactory

pytestmark = [pytest.mark.broker]

SCHEMA = json.loads((SCHEMA_DIR / "order.placed.v1.json").read_text())


def schema_errors(envelope: dict) -> list[str]:
    validator = Draft202012Validator(SCHEMA, format_checker=FormatChecker())
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(envelope)]


def test_an_order_placed_through_the_api_reaches_a_new_subscriber_once(transactional_db, event_tap, client_for):
    buyer = BuyerFactory(first_name="Ada", last_name="Lovelace")
    seller_a, seller_b = SellerFactory(), SellerFactory()
    hammer = ProductFactory(seller=seller_a, price=Decimal("19.90"), stock=5)
    bolts = ProductFactory(seller=seller_b, price=Decimal("2.50"), stock=10)
    request_id = f"test-{uuid.uuid4().hex}"

    response = client_for(buyer).post(
        "/api/orders/",
        {"lines": [{"product": hammer.pk, "quantity": 2}, {"product": bolts.pk, "quantity": 4}]},
        format="json",
        headers={"X-Request-ID": request_id},
    )

    assert response.status_code == 201, response.content
    assert response["X-Request-ID"] == request_id
    order_id = response.json()["id"]
    messages = event_tap.drain(expected=1)
    assert len(messages) == 1, "the event must arrive exactly once"
    [message] = messages
    envelope = message.payload

    assert schema_errors(envelope) == []
    assert validate_envelope(envelope) == envelope
    assert envelope["type"] == "order.placed"
    assert envelope["version"] == 1
    assert envelope["correlation_id"] == request_id
    # FormatChecker skips "date-time" unless rfc3339-validator is installed: check the times here
    for moment in (envelope["occurred_at"], envelope["data"]["placed_at"]):
        assert moment.endswith("Z")
        assert datetime.fromisoformat(moment).utcoffset() == timedelta(0)
    data = envelope["data"]
    assert data["order_id"] == order_id
    assert data["buyer"] == {"id": buyer.pk, "email": buyer.email, "name": "Ada Lovelace"}
    assert data["total"] == "49.80"
    assert [(line["sku"], line["quantity"], line["unit_price"], line["line_total"]) for line in data["lines"]] == [
        (hammer.sku, 2, "19.90", "39.80"),
        (bolts.sku, 4, "2.50", "10.00"),
    ]
    assert {line["seller_id"] for line in data["lines"]} == {seller_a.pk, seller_b.pk}

    assert message.properties["message_id"] == envelope["id"]
    assert message.properties["correlation_id"] == request_id
    assert message.properties["delivery_mode"] == 2
    assert message.content_type == "application/json"
    assert message.headers == {"event_type": "order.placed", "event_version": 1}
    assert message.delivery_info["exchange"] == "marketplace.events"

    assert on_commit_publisher.flush()
    row = OutboxEvent.objects.get(event_id=envelope["id"])
    assert row.published_at is not None
    assert row.attempts == 1
    assert row.last_error == ""
    assert row.claimed_until is None
    assert row.envelope == envelope


def test_the_outbox_row_is_written_by_the_order_transaction(transactional_db, event_tap):
    buyer = BuyerFactory()
    product = ProductFactory(stock=3)

    placed = order_place(buyer=buyer, lines=[LineRequest(product.pk, 1)], correlation_id="req-1")

    [row] = OutboxEvent.objects.all()
    assert row.envelope["data"]["order_id"] == placed.order.pk
    assert row.envelope["correlation_id"] == "req-1"
    [message] = event_tap.drain(expected=1)
    assert message.properties["message_id"] == str(row.event_id)


def test_a_rolled_back_transaction_leaves_no_row_and_publishes_nothing(transactional_db, event_tap):
    envelope = order_placed_sample()

    def enqueue_then_fail():
        with transaction.atomic():
            enqueue_event(envelope)
            assert OutboxEvent.objects.count() == 1
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        enqueue_then_fail()

    assert not OutboxEvent.objects.exists()
    assert event_tap.drain() == []


def test_an_order_refused_for_stock_leaves_no_row_and_publishes_nothing(transactional_db, event_tap, client_for):
    buyer = BuyerFactory()
    plenty, scarce = ProductFactory(stock=10), ProductFactory(stock=1)

    with pytest.raises(InsufficientStock):
        order_place(
            buyer=buyer, lines=[LineRequest(plenty.pk, 1), LineRequest(scarce.pk, 2)], correlation_id="req-stock"
        )
    response = client_for(buyer).post("/api/orders/", {"lines": [{"product": scarce.pk, "quantity": 5}]}, format="json")

    assert response.status_code == 409, response.content
    assert not Order.objects.exists()
    assert not OutboxEvent.objects.exists()
    plenty.refresh_from_db()
    assert plenty.stock == 10
    assert event_tap.drain() == []


def test_a_caller_transaction_that_fails_after_the_order_publishes_nothing(transactional_db, event_tap):
    buyer = BuyerFactory()
    product = ProductFactory(stock=4)

    def place_then_fail():
        with transaction.atomic():
            order_place(buyer=buyer, lines=[LineRequest(product.pk, 3)], correlation_id="req-rollback")
            raise RuntimeError("payment failed")

    with pytest.raises(RuntimeError, match="payment failed"):
        place_then_fail()

    assert not Order.objects.exists()
    assert not OutboxEvent.objects.exists()
    product.refresh_from_db()
    assert product.stock == 4
    assert event_tap.drain() == []


def test_the_event_waits_for_the_outermost_commit(transactional_db, event_tap):
    buyer = BuyerFactory()
    product = ProductFactory(stock=4)

    with transaction.atomic():
        placed = order_place(buyer=buyer, lines=[LineRequest(product.pk, 1)], correlation_id="req-outer")
        assert event_tap.drain(quiet=0.3) == [], "published before the caller's transaction committed"

    [message] = event_tap.drain(expected=1)
    assert message.payload["data"]["order_id"] == placed.order.pk
    assert on_commit_publisher.flush()
    assert OutboxEvent.objects.get().published_at is not None


def test_enqueue_event_refuses_to_run_outside_a_transaction(transactional_db):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        enqueue_event(order_placed_sample())

    assert not OutboxEvent.objects.exists()
