from decimal import Decimal

import pytest

from marketplace.events.models import ProcessedEvent
from notifications.models import Notification
from segmentation.models import CustomerProfile
from tests.factories import BuyerFactory, ProductFactory, SellerFactory
from tests.support.waiting import eventually

pytestmark = [pytest.mark.workers]


def test_an_order_reaches_all_three_subscribers(workers, faults, client_for):
    buyer = BuyerFactory()
    seller_a, seller_b = SellerFactory(), SellerFactory()
    hammer = ProductFactory(seller=seller_a, price=Decimal("19.90"), stock=5)
    bolts = ProductFactory(seller=seller_b, price=Decimal("2.50"), stock=5)

    response = client_for(buyer).post(
        "/api/orders/",
        {"lines": [{"product": hammer.pk, "quantity": 2}, {"product": bolts.pk, "quantity": 4}]},
        format="json",
    )
    assert response.status_code == 201, response.content
    order_id = response.json()["id"]

    profile = eventually(
        lambda: CustomerProfile.objects.filter(buyer=buyer).first(), timeout=15, message="segmentation"
    )
    assert profile.order_count == 1
    assert profile.lifetime_spend == Decimal("49.80")
    assert profile.segment == CustomerProfile.Segment.NEW

    emails = eventually(lambda: len(faults.emails()) >= 3 and faults.emails(), message="three emails")
    by_recipient = {tuple(mail["to"]): mail for mail in emails}
    assert set(by_recipient) == {(buyer.email,), (seller_a.email,), (seller_b.email,)}
    assert "49.80" in by_recipient[(buyer.email,)]["body"]
    assert hammer.sku in by_recipient[(seller_a.email,)]["body"]
    assert bolts.sku not in by_recipient[(seller_a.email,)]["body"]

    assert Notification.objects.filter(order_id=order_id).count() == 3
    assert set(ProcessedEvent.objects.values_list("subscriber", flat=True)) == {
        "order_confirmation",
        "seller_notification",
        "customer_segmentation",
    }
