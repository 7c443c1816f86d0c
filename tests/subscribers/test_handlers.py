"""The subscriber handlers are plain functions: called directly, as from a shell."""

import threading
import uuid
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from marketplace.events.models import OutboxEvent, ProcessedEvent
from marketplace.events.subscriber import insert_once
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


def test_a_known_buyers_profile_is_locked_by_one_statement(placed):
    buyer, _, envelope = placed
    segmentation.update_customer_segment(envelope=envelope)
    second = dict(envelope, id=str(uuid.uuid4()), data={**envelope["data"], "order_id": 10**9})

    with CaptureQueriesContext(connection) as queries:
        assert segmentation.update_customer_segment(envelope=second) is True

    profile_queries = [query["sql"] for query in queries if "segmentation_customerprofile" in query["sql"]]
    assert profile_queries[0].startswith("SELECT")
    assert profile_queries[0].endswith("FOR UPDATE")
    assert not any(sql.startswith("INSERT") for sql in profile_queries)
    assert CustomerProfile.objects.get(buyer=buyer).order_count == 2


def test_insert_once_skips_a_row_when_a_row_of_the_same_table_has_the_given_values(db):
    seller = SellerFactory()
    told_of_cancellation = {"order_id": 7, "kind": Notification.Kind.SELLER_ORDER_CANCELLED, "seller_id": seller.pk}
    Notification.objects.create(
        event_id=uuid.uuid4(), channel=Notification.Channel.EMAIL, recipient=seller.email, **told_of_cancellation
    )
    new_order = Notification(
        event_id=uuid.uuid4(),
        kind=Notification.Kind.SELLER_ORDER,
        channel=Notification.Channel.EMAIL,
        recipient=seller.email,
        order_id=7,
        seller_id=seller.pk,
    )

    with transaction.atomic():
        assert not insert_once(new_order, unless=told_of_cancellation)
        assert insert_once(new_order, unless={**told_of_cancellation, "order_id": 8})
        assert not insert_once(new_order)  # its unique key is taken now
        with pytest.raises(ValueError, match="would never match"):
            insert_once(new_order, unless={"seller_id": None})
    assert Notification.objects.filter(kind=Notification.Kind.SELLER_ORDER).count() == 1
