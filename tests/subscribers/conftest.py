import pytest

from marketplace.events.models import OutboxEvent
from tests.factories import BuyerFactory, ProductFactory, SellerFactory
from tests.support.orders import place


@pytest.fixture
def place_order(client_for):
    """``place_order(buyer, (product, quantity), ...)`` → (order json, envelope) via the real API."""

    def place_by(buyer, *lines):
        response = place(client_for(buyer), *lines)
        assert response.status_code == 201, response.content
        order = response.json()
        envelope = OutboxEvent.objects.get(envelope__data__order_id=order["id"]).envelope
        return order, envelope

    return place_by


@pytest.fixture
def shop(seller_webhook):
    """A buyer, a seller notified by webhook (so only the buyer's confirmation is an email), a product."""
    seller = SellerFactory(webhook_url=seller_webhook.url, webhook_secret="s3cret")

    class Shop:
        buyer = BuyerFactory()
        product = ProductFactory(seller=seller, stock=100)

    Shop.seller = seller
    return Shop
