"""The operator's trace: from an order to its event, each subscriber's state and its effects."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.events.failure_groups import grouping_fields
from marketplace.events.models import DeliveryAttempt, FailedEvent, FailedEventReplay, OutboxEvent, ProcessedEvent
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


def test_a_trace_says_how_a_failure_ended_and_numbers_attempts_across_replays(admin_client):
    order = order_place(buyer=BuyerFactory(), lines=[LineRequest(ProductFactory().pk, 1)], correlation_id="req-r").order
    event = OutboxEvent.objects.get()
    OutboxEvent.objects.update(published_at=timezone.now())
    root = "seller 7 (Acme) webhook http://10.0.0.7:8080/hooks/7 answered 503 Service Unavailable"
    error = f"SellersNotNotifiedTransient: root cause: x.TransientDownstreamError: {root}\n2 of 2 sellers: {'y' * 300}"
    failed = FailedEvent.objects.create(
        subscriber="seller_notification",
        event_id=event.event_id,
        event_type="order.placed",
        payload=event.envelope,
        exception_class="marketplace.events.errors.TransientDownstreamError",
        exception_message=root,
        last_failed_at=timezone.now(),
        status=FailedEvent.Status.RESOLVED,
        **grouping_fields(subscriber="seller_notification", exception_class="x.Error", exception_message=root),
    )
    FailedEventReplay.objects.create(failed_event=failed, via="admin", outcome=FailedEventReplay.Outcome.SUCCEEDED)
    ProcessedEvent.objects.create(subscriber="seller_notification", event_id=event.event_id)
    start = timezone.now()
    outcomes = [  # the subscriber's own numbers: a replay counts from 1 again
        (1, DeliveryAttempt.Outcome.RETRYING, None),
        (2, DeliveryAttempt.Outcome.DEAD_LETTERED, None),
        (1, DeliveryAttempt.Outcome.SUCCEEDED, failed),
    ]
    for n, (attempt, outcome, replay_of) in enumerate(outcomes):
        DeliveryAttempt.objects.create(
            subscriber="seller_notification",
            event_id=event.event_id,
            attempt=attempt,
            started_at=start + timedelta(seconds=n),
            duration_ms=1.0,
            outcome=outcome,
            error="" if outcome == DeliveryAttempt.Outcome.SUCCEEDED else error,
            replay_of=replay_of,
        )

    response = admin_client.get(reverse("admin:events_trace_order", args=[order.pk]))

    [trace] = response.context["traces"]
    [seller] = [s for s in trace.subscribers if s.subscriber == "seller_notification"]
    assert (seller.state, seller.history) == ("done", "then resolved by replay")
    assert [a.label for a in seller.attempts] == ["#1", "#2", "#3 (replay)"]
    page = response.content.decode()
    failed_url = reverse("admin:events_failedevent_change", args=[failed.pk])
    assert f'failed (<a href="{failed_url}">event #{failed.pk}</a>), then resolved by replay' in page
    assert root in page, "the error's useful part is not cut off"
    assert "y" * 300 in page, "nor is the rest (folded)"
