"""order.cancelled: the buyer is told once, each seller of their own lines, and the order leaves the
buyer's profile exactly once, whatever order and however often the events arrive.

The order.cancelled envelopes are built here from the order's order.placed envelope, as the
contract (marketplace/events/schemas/order.cancelled.v1.json) describes them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from marketplace.events import outbox
from marketplace.events.broker import BrokerPublisher
from marketplace.events.envelope import build_envelope, rfc3339, validate_envelope
from marketplace.events.models import ProcessedEvent
from notifications import handlers as notifications
from notifications.models import Notification
from orders.events import order_placed_envelope
from orders.services import LineRequest, order_place
from segmentation import handlers as segmentation
from segmentation.models import CustomerOrder, CustomerProfile
from tests.factories import BuyerFactory, ProductFactory, SellerFactory
from tests.support.waiting import eventually
from tests.support.webhooks import SellerWebhook
from tests.support.workers import record_dead_letters, worker_is_idle

CONFIRMATION = "notifications.send_order_confirmation"
SELLERS = "notifications.notify_sellers"
SEGMENTATION = "segmentation.update_customer_segment"
ORDER_SUBSCRIBERS = ("order_confirmation", "seller_notification", "customer_segmentation")


def cancelled_envelope(placed: dict, *, by: str = "buyer", at: datetime | None = None) -> dict:
    """The order.cancelled v1 event of the order ``placed`` (its order.placed envelope) describes."""
    at = at or timezone.now()
    envelope = build_envelope(
        event_type="order.cancelled",
        version=1,
        data={**placed["data"], "status": "cancelled", "cancelled_at": rfc3339(at), "cancelled_by": by},
        occurred_at=at,
        correlation_id=placed["correlation_id"],
    )
    return validate_envelope(envelope)


def publish(broker_url: str, *envelopes: dict) -> None:
    """Publish to the fanout, as the producer's outbox does."""
    publisher = BrokerPublisher(url=broker_url)
    try:
        for envelope in envelopes:
            publisher.publish(envelope)
    finally:
        publisher.close()


def place(buyer, *lines) -> dict:
    """Place an order (products and quantities) and return its order.placed envelope, not published."""
    placed = order_place(
        buyer=buyer, lines=[LineRequest(product.pk, quantity) for product, quantity in lines], correlation_id="t"
    )
    return order_placed_envelope(order=placed.order, correlation_id="t")


def processed(subscriber: str, envelope: dict) -> bool:
    return ProcessedEvent.objects.filter(subscriber=subscriber, event_id=envelope["id"]).exists()


def profile_of(buyer) -> tuple[int, Decimal, Decimal, str]:
    profile = CustomerProfile.objects.get(buyer=buyer)
    return profile.order_count, profile.lifetime_spend, profile.average_order_value, profile.segment


@pytest.fixture
def locmem_email(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def other_webhook():
    webhook = SellerWebhook()
    yield webhook
    webhook.close()


# --- the handlers, called directly --------------------------------------------------------------


def test_the_buyer_is_emailed_the_cancellation_once(db, locmem_email):
    buyer = BuyerFactory()
    placed = place(buyer, (ProductFactory(price=Decimal("12.50")), 2))
    cancelled = cancelled_envelope(placed, by="staff")

    assert notifications.send_order_cancellation(envelope=cancelled) is True
    assert notifications.send_order_cancellation(envelope=cancelled) is False

    [message] = mail.outbox
    order_id = placed["data"]["order_id"]
    assert message.to == [buyer.email]
    assert message.subject == f"Your order #{order_id} is cancelled"
    assert "was cancelled by our staff" in message.body
    assert "Total: 25.00 EUR" in message.body
    assert message.extra_headers["X-Marketplace-Event-Id"] == cancelled["id"]
    [notification] = Notification.objects.filter(order_id=order_id)
    assert notification.kind == Notification.Kind.ORDER_CANCELLATION
    assert processed("order_confirmation", cancelled)


def test_a_confirmation_arriving_after_the_cancellation_is_not_sent(db, locmem_email, seller_webhook):
    """An order.placed retried after its order.cancelled: nobody hears "new" after "cancelled"."""
    webhook_seller, email_seller = SellerFactory(webhook_url=seller_webhook.url), SellerFactory()
    placed = place(BuyerFactory(), (ProductFactory(seller=webhook_seller), 1), (ProductFactory(seller=email_seller), 1))
    cancelled = cancelled_envelope(placed)
    assert notifications.send_order_cancellation(envelope=cancelled) is True
    assert notifications.notify_sellers_of_cancellation(envelope=cancelled) == 2

    assert notifications.send_order_confirmation(envelope=placed) is False
    assert notifications.notify_sellers(envelope=placed) == 0

    assert [message.subject for message in mail.outbox] == [
        f"Your order #{placed['data']['order_id']} is cancelled",
        f"Order #{placed['data']['order_id']} cancelled",
    ]
    assert [request["body"]["event_type"] for request in seller_webhook.requests] == ["order.cancelled"]
    assert processed("order_confirmation", placed)
    assert processed("seller_notification", placed)
    assert not Notification.objects.filter(event_id=placed["id"]).exists()


def test_each_seller_hears_of_the_cancellation_of_their_own_lines_only(db, locmem_email, seller_webhook):
    webhook_seller = SellerFactory(webhook_url=seller_webhook.url, webhook_secret="s3cret")
    email_seller = SellerFactory()
    hammer = ProductFactory(seller=webhook_seller, price=Decimal("19.90"))
    bolts = ProductFactory(seller=email_seller, price=Decimal("2.50"))
    placed = place(BuyerFactory(), (hammer, 2), (bolts, 4))
    cancelled = cancelled_envelope(placed)

    assert notifications.notify_sellers_of_cancellation(envelope=cancelled) == 2
    assert notifications.notify_sellers_of_cancellation(envelope=cancelled) == 0

    [request] = seller_webhook.requests
    body = request["body"]
    assert body["event_type"] == "order.cancelled"
    assert body["status"] == "cancelled"
    assert (body["cancelled_at"], body["cancelled_by"]) == (cancelled["data"]["cancelled_at"], "buyer")
    assert [line["sku"] for line in body["lines"]] == [hammer.sku]
    assert body["seller_total"] == "39.80"
    assert request["headers"]["X-Marketplace-Event-Type"] == "order.cancelled"
    assert request["headers"]["Idempotency-Key"] == f"{cancelled['id']}:{webhook_seller.pk}"
    signed = hmac.new(b"s3cret", json.dumps(body, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()
    assert request["headers"]["X-Marketplace-Signature"] == f"sha256={signed}"

    [message] = mail.outbox
    assert message.to == [email_seller.email]
    assert message.subject == f"Order #{placed['data']['order_id']} cancelled"
    assert bolts.sku in message.body
    assert hammer.sku not in message.body
    assert "Your total was: 10.00 EUR" in message.body
    kinds = Notification.objects.filter(event_id=cancelled["id"]).values_list("kind", "seller_id")
    assert sorted(kinds) == sorted(
        [
            (Notification.Kind.SELLER_ORDER_CANCELLED, webhook_seller.pk),
            (Notification.Kind.SELLER_ORDER_CANCELLED, email_seller.pk),
        ]
    )
    assert processed("seller_notification", cancelled)


def test_a_seller_refusing_the_cancellation_is_named_and_stops_no_other_seller(
    db, locmem_email, seller_webhook, other_webhook
):
    refusing = SellerFactory(webhook_url=seller_webhook.url)
    accepting = SellerFactory(webhook_url=other_webhook.url)
    seller_webhook.default_status = 410
    cancelled = cancelled_envelope(
        place(BuyerFactory(), (ProductFactory(seller=refusing), 1), (ProductFactory(seller=accepting), 1))
    )

    with pytest.raises(notifications.SellerWebhookRejected) as raised:
        notifications.notify_sellers_of_cancellation(envelope=cancelled)

    assert f"seller {refusing.pk} ({refusing.name}) webhook {seller_webhook.url}" in str(raised.value)
    assert "410" in str(raised.value)
    assert [request["body"]["event_type"] for request in other_webhook.accepted()] == ["order.cancelled"]
    assert not processed("seller_notification", cancelled)

    seller_webhook.default_status = 200  # the retry tells only the seller not told yet
    assert notifications.notify_sellers_of_cancellation(envelope=cancelled) == 1
    assert len(other_webhook.requests) == 1
    assert processed("seller_notification", cancelled)


def test_a_cancellation_takes_the_order_out_of_the_profile_exactly_once(db):
    buyer = BuyerFactory()
    first = place(buyer, (ProductFactory(price=Decimal("10.00")), 1))
    second = place(buyer, (ProductFactory(price=Decimal("30.00")), 1))
    for envelope in (first, second):
        assert segmentation.update_customer_segment(envelope=envelope) is True
    assert profile_of(buyer) == (2, Decimal("40.00"), Decimal("20.00"), "returning")

    cancel_second = cancelled_envelope(second)
    assert segmentation.remove_cancelled_order(envelope=cancel_second) is True
    assert segmentation.remove_cancelled_order(envelope=cancel_second) is False  # the same event again
    assert segmentation.remove_cancelled_order(envelope=cancelled_envelope(second)) is False  # another one
    assert segmentation.update_customer_segment(envelope=second) is False  # order.placed redelivered
    assert profile_of(buyer) == (1, Decimal("10.00"), Decimal("10.00"), "new")
    profile = CustomerProfile.objects.get(buyer=buyer)
    first_placed_at = datetime.fromisoformat(first["data"]["placed_at"])
    assert profile.first_order_at == profile.last_order_at == first_placed_at

    assert segmentation.remove_cancelled_order(envelope=cancelled_envelope(first)) is True
    assert segmentation.remove_cancelled_order(envelope=cancelled_envelope(first)) is False
    assert profile_of(buyer) == (0, Decimal("0.00"), Decimal("0.00"), "new")
    profile.refresh_from_db()
    assert profile.first_order_at is None
    assert profile.last_order_at is None
    rows = CustomerOrder.objects.filter(profile__buyer=buyer).values_list("counted", flat=True)
    assert list(rows) == [False, False]


def test_a_cancellation_before_its_order_placed_counts_nothing_ever(db):
    buyer = BuyerFactory()
    kept = place(buyer, (ProductFactory(price=Decimal("10.00")), 1))
    late = place(buyer, (ProductFactory(price=Decimal("990.00")), 1))
    segmentation.update_customer_segment(envelope=kept)
    before = profile_of(buyer)

    assert segmentation.remove_cancelled_order(envelope=cancelled_envelope(late)) is False
    assert profile_of(buyer) == before
    assert segmentation.update_customer_segment(envelope=late) is False  # arrives after its cancellation
    assert profile_of(buyer) == before == (1, Decimal("10.00"), Decimal("10.00"), "new")
    row = CustomerOrder.objects.get(order_id=late["data"]["order_id"])
    assert (row.counted, row.cancelled, row.total) == (False, True, Decimal("990.00"))


def test_the_profile_never_goes_negative_for_an_order_counted_before_the_rows_existed(db):
    """A profile whose order was counted before CustomerOrder rows existed, with a row for the
    order (as migration 0003 backfills) but figures that disagree: clamped at zero."""
    buyer = BuyerFactory()
    placed = place(buyer, (ProductFactory(price=Decimal("50.00")), 1))
    profile = CustomerProfile.objects.create(buyer=buyer, order_count=1, lifetime_spend=Decimal("20.00"))
    CustomerOrder.objects.create(profile=profile, order_id=placed["data"]["order_id"], total="50.00", counted=True)

    assert segmentation.remove_cancelled_order(envelope=cancelled_envelope(placed)) is True
    assert profile_of(buyer) == (0, Decimal("0.00"), Decimal("0.00"), "new")


# --- real worker processes ----------------------------------------------------------------------


@pytest.mark.workers
def test_a_cancellation_published_twice_emails_the_buyer_once_and_tells_each_seller_once(
    workers, faults, shop, place_order, seller_webhook, broker_url
):
    email_seller = SellerFactory()
    bolts = ProductFactory(seller=email_seller, stock=10)
    _, placed = place_order(shop.buyer, (shop.product, 1), (bolts, 2))
    eventually(lambda: len(faults.emails()) == 2 and len(seller_webhook.accepted()) == 1, message="placed effects")
    eventually(lambda: processed("customer_segmentation", placed), message="the order counted")

    cancelled = cancelled_envelope(placed)
    publish(broker_url, cancelled, cancelled)

    for task in (CONFIRMATION, SELLERS, SEGMENTATION):
        eventually(
            lambda task=task: len([s for s in faults.task_starts(task) if s["event_id"] == cancelled["id"]]) == 2,
            timeout=20,
            message=f"both deliveries of the cancellation to {task}",
        )
    for subscriber in ORDER_SUBSCRIBERS:
        eventually(lambda subscriber=subscriber: processed(subscriber, cancelled), message=f"{subscriber} done")

    order_id = placed["data"]["order_id"]
    cancellations = [mail for mail in faults.emails() if mail["event_id"] == cancelled["id"]]
    assert sorted((mail["to"][0], mail["subject"]) for mail in cancellations) == sorted(
        [
            (shop.buyer.email, f"Your order #{order_id} is cancelled"),
            (email_seller.email, f"Order #{order_id} cancelled"),
        ]
    )
    seller_mail = next(mail for mail in cancellations if mail["to"] == [email_seller.email])
    assert bolts.sku in seller_mail["body"]
    assert shop.product.sku not in seller_mail["body"]
    [webhook_cancellation] = [r for r in seller_webhook.accepted() if r["body"]["event_type"] == "order.cancelled"]
    assert [line["sku"] for line in webhook_cancellation["body"]["lines"]] == [shop.product.sku]
    assert sorted(Notification.objects.filter(event_id=cancelled["id"]).values_list("kind", flat=True)) == [
        Notification.Kind.ORDER_CANCELLATION,
        Notification.Kind.SELLER_ORDER_CANCELLED,
        Notification.Kind.SELLER_ORDER_CANCELLED,
    ]
    assert profile_of(shop.buyer) == (0, Decimal("0.00"), Decimal("0.00"), "new")
    assert record_dead_letters(subscriber__in=ORDER_SUBSCRIBERS) == []


@pytest.mark.workers
def test_cancelled_orders_leave_the_profile_and_it_never_goes_negative(
    workers, faults, shop, place_order, broker_url, settings
):
    placed = [place_order(shop.buyer, (shop.product, 1))[1] for _ in range(settings.SEGMENT_RETURNING_ORDERS)]
    eventually(
        lambda: all(processed("customer_segmentation", envelope) for envelope in placed), message="orders counted"
    )
    price = shop.product.price
    count = len(placed)
    assert profile_of(shop.buyer) == (count, price * count, price, "returning")

    last = cancelled_envelope(placed[-1])
    publish(broker_url, last, last, cancelled_envelope(placed[-1]))  # twice, and a second event for it
    eventually(lambda: processed("customer_segmentation", last), message="the cancellation handled")
    eventually(lambda: profile_of(shop.buyer)[0] == count - 1, message="the order taken out")
    assert profile_of(shop.buyer) == (count - 1, price * (count - 1), price, "new")

    everything = [cancelled_envelope(envelope) for envelope in placed]
    publish(broker_url, *everything, *everything)
    eventually(
        lambda: all(processed("customer_segmentation", envelope) for envelope in everything),
        message="every cancellation handled",
    )
    publish(broker_url, *placed)  # every order.placed redelivered after its cancellation
    placed_ids = {envelope["id"] for envelope in placed}
    eventually(
        lambda: len([s for s in faults.task_starts(SEGMENTATION) if s["event_id"] in placed_ids]) == 2 * count,
        message="the redelivered orders handled",
    )
    eventually(lambda: worker_is_idle(workers["customer_segmentation"]), message="segmentation to finish")
    assert not CustomerOrder.objects.filter(profile__buyer=shop.buyer, counted=True).exists()
    assert profile_of(shop.buyer) == (0, Decimal("0.00"), Decimal("0.00"), "new")


@pytest.mark.workers
def test_a_cancellation_arriving_before_its_order_placed_leaves_the_profile_unchanged(
    workers, faults, shop, place_order, seller_webhook, broker_url, monkeypatch
):
    _, kept = place_order(shop.buyer, (shop.product, 1))
    eventually(lambda: processed("customer_segmentation", kept), message="the first order counted")
    before = profile_of(shop.buyer)

    # The second order's order.placed is held back (not published on commit: the test publishes it
    # later), so its order.cancelled overtakes it.
    with monkeypatch.context() as held:
        held.setattr(outbox, "publish_after_commit", lambda outbox_id, envelope: None)
        _, late = place_order(shop.buyer, (shop.product, 2))
    cancelled = cancelled_envelope(late)
    publish(broker_url, cancelled)
    for subscriber in ORDER_SUBSCRIBERS:
        eventually(lambda subscriber=subscriber: processed(subscriber, cancelled), message=f"{subscriber}: cancelled")
    assert profile_of(shop.buyer) == before

    publish(broker_url, late)
    for subscriber in ORDER_SUBSCRIBERS:
        eventually(lambda subscriber=subscriber: processed(subscriber, late), message=f"{subscriber}: late placed")

    assert profile_of(shop.buyer) == before == (1, shop.product.price, shop.product.price, "new")
    # Nobody hears of the order as new after its cancellation.
    late_order = late["data"]["order_id"]
    buyer_mail = [mail["subject"] for mail in faults.emails() if mail["to"] == [shop.buyer.email]]
    assert f"Your order #{late_order} is cancelled" in buyer_mail
    assert f"Your order #{late_order} is confirmed" not in buyer_mail
    late_webhooks = [r["body"]["event_type"] for r in seller_webhook.accepted() if r["body"]["order_id"] == late_order]
    assert late_webhooks == ["order.cancelled"]
    assert record_dead_letters(subscriber__in=ORDER_SUBSCRIBERS) == []
