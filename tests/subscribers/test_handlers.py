"""The subscriber handlers are plain functions: called directly, as from a shell."""

import threading
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection

from marketplace.events.models import OutboxEvent, ProcessedEvent
from marketplace.mail import EmailNotSent
from notifications import handlers as notifications
from notifications.models import Notification
from orders.events import order_placed_envelope
from orders.services import LineRequest, order_place
from segmentation import handlers as segmentation
from segmentation.models import CustomerProfile
from tests.factories import BuyerFactory, ProductFactory, SellerFactory


@pytest.fixture
def placed(db):
    """An order over two sellers' products, and its envelope, without touching the broker."""
    buyer = BuyerFactory()
    first, second = ProductFactory(price=Decimal("12.50")), ProductFactory(price=Decimal("3.00"))
    placed = order_place(buyer=buyer, lines=[LineRequest(first.pk, 2), LineRequest(second.pk, 1)], correlation_id="t")
    return buyer, placed.order, order_placed_envelope(order=placed.order, correlation_id="t")


def test_the_confirmation_is_sent_once_however_often_it_is_called(placed, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    buyer, order, envelope = placed
    assert notifications.send_order_confirmation(envelope=envelope) is True
    assert notifications.send_order_confirmation(envelope=envelope) is False

    [message] = mail.outbox
    assert message.to == [buyer.email]
    assert f"#{order.pk}" in message.subject
    assert "Total: 28.00 EUR" in message.body
    assert message.extra_headers["X-Marketplace-Event-Id"] == envelope["id"]


def test_each_seller_hears_only_of_their_own_lines(placed, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    _, order, envelope = placed
    assert notifications.notify_sellers(envelope=envelope) == 2
    assert notifications.notify_sellers(envelope=envelope) == 0

    by_seller = {message.to[0]: message.body for message in mail.outbox}
    lines = list(order.lines.select_related("seller"))
    assert set(by_seller) == {line.seller.email for line in lines}
    for line in lines:
        others = [other.sku for other in lines if other.seller_id != line.seller_id]
        assert line.sku in by_seller[line.seller.email]
        assert not any(sku in by_seller[line.seller.email] for sku in others)
    assert Notification.objects.filter(kind=Notification.Kind.SELLER_ORDER).count() == 2


def test_a_failed_send_rolls_back_its_marker_so_a_retry_sends_again(placed, settings):
    settings.EMAIL_BACKEND = "tests.support.faults.ControlledEmailBackend"
    from tests.support.faults import EmailProviderDown, faults_dir

    _, _, envelope = placed
    (faults_dir() / "email.fail").write_text("1")
    try:
        with pytest.raises(EmailNotSent) as raised:
            notifications.send_order_confirmation(envelope=envelope)
        assert isinstance(raised.value.__cause__, EmailProviderDown)
        assert "email backend tests.support.faults.ControlledEmailBackend" in str(raised.value)
        assert not ProcessedEvent.objects.filter(event_id=envelope["id"]).exists()
        assert notifications.send_order_confirmation(envelope=envelope) is True
    finally:
        (faults_dir() / "email.fail").unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("orders", "spend", "segment"),
    [
        (1, "10.00", "new"),
        (2, "10.00", "returning"),
        (5, "10.00", "loyal"),
        (1, "1000.00", "high_value"),
        (9, "5000.00", "high_value"),
    ],
)
def test_segments_follow_the_thresholds_in_settings(orders, spend, segment):
    assert segmentation.segment_for(order_count=orders, lifetime_spend=Decimal(spend)) == segment


def test_the_profile_counts_each_order_once(placed):
    buyer, order, envelope = placed
    assert segmentation.update_customer_segment(envelope=envelope) is True
    assert segmentation.update_customer_segment(envelope=envelope) is False

    profile = CustomerProfile.objects.get(buyer=buyer)
    assert profile.order_count == 1
    assert profile.lifetime_spend == Decimal("28.00")
    assert profile.average_order_value == Decimal("28.00")
    assert profile.first_order_at == profile.last_order_at == order.created_at


def test_two_deliveries_of_one_event_at_the_same_moment_count_once(transactional_db):
    buyer = BuyerFactory()
    product = ProductFactory(seller=SellerFactory())
    placed = order_place(buyer=buyer, lines=[LineRequest(product.pk, 1)], correlation_id="t")
    envelope = OutboxEvent.objects.get(envelope__data__order_id=placed.order.pk).envelope
    barrier = threading.Barrier(4)
    outcomes = []

    def deliver():
        try:
            barrier.wait()
            outcomes.append(segmentation.update_customer_segment(envelope=envelope))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == [False, False, False, True]
    assert CustomerProfile.objects.get(buyer=buyer).order_count == 1
