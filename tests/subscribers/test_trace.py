"""The operator's trace: from an order to its event, each subscriber's state and its effects."""

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.events.failure_groups import grouping_fields
from marketplace.events.models import DeliveryAttempt, FailedEvent, OutboxEvent, ProcessedEvent
from notifications.models import Notification
from orders.services import LineRequest, order_place
from tests.factories import BuyerFactory, ProductFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_an_orders_trace_shows_where_its_event_is_with_each_subscriber(admin_client):
    buyer = BuyerFactory(email="ada@example.com")
    product = ProductFactory()
    order = order_place(buyer=buyer, lines=[LineRequest(product.pk, 1)], correlation_id="req-trace").order
    event = OutboxEvent.objects.get()
    OutboxEvent.objects.update(published_at=timezone.now())
    # order_confirmation is done (and emailed), seller_notification gave up, segmentation retries.
    ProcessedEvent.objects.create(subscriber="order_confirmation", event_id=event.event_id)
    Notification.objects.create(
        event_id=event.event_id,
        kind=Notification.Kind.ORDER_CONFIRMATION,
        channel=Notification.Channel.EMAIL,
        recipient=buyer.email,
        order_id=order.pk,
    )
    failed = FailedEvent.objects.create(
        subscriber="seller_notification",
        event_id=event.event_id,
        event_type="order.placed",
        payload=event.envelope,
        exception_class="notifications.handlers.SellerWebhookRejected",
        exception_message="seller 1 webhook answered 410",
        last_failed_at=timezone.now(),
        **grouping_fields(
            subscriber="seller_notification",
            exception_class="notifications.handlers.SellerWebhookRejected",
            exception_message="seller 1 webhook answered 410",
        ),
    )
    DeliveryAttempt.objects.create(
        subscriber="customer_segmentation",
        event_id=event.event_id,
        attempt=1,
        started_at=timezone.now(),
        duration_ms=3.2,
        worker="customer_segmentation@host",
        outcome=DeliveryAttempt.Outcome.RETRYING,
        error="OperationalError: could not obtain lock",
    )

    order_page = admin_client.get(reverse("admin:orders_order_change", args=[order.pk])).content.decode()
    trace_url = reverse("admin:events_trace_order", args=[order.pk])
    assert trace_url in order_page

    response = admin_client.get(trace_url)

    assert response.status_code == 200
    [trace] = response.context["traces"]
    states = {s.subscriber: s.state for s in trace.subscribers}
    assert states == {
        "order_confirmation": "done",
        "seller_notification": "failed",
        "customer_segmentation": "retrying",
        "loyalty_rewards": "not subscribed",
    }
    page = response.content.decode()
    assert reverse("admin:events_failedevent_change", args=[failed.pk]) in page
    assert "Order confirmation (buyer) by email to ada@example.com" in page
    assert reverse("admin:orders_order_change", args=[order.pk]) in page
    assert reverse("admin:auth_user_change", args=[buyer.pk]) in page
    assert reverse("admin:orders_seller_change", args=[product.seller_id]) in page
    # And back: the failed event and the notification link to the event's trace.
    event_trace = reverse("admin:events_trace_event", args=[event.event_id])
    assert (
        event_trace in admin_client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()
    )
    assert event_trace in admin_client.get(reverse("admin:notifications_notification_changelist")).content.decode()
    assert admin_client.get(event_trace).status_code == 200
