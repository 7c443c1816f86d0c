"""customer.segment_changed: written to the outbox in the transaction that moves a buyer to another
segment, published once through the fanout when it commits, never for a change that rolled back;
this service's own subscribers ack and skip it."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from marketplace.events import outbox, topology
from marketplace.events.envelope import rfc3339, schema_path, validate_envelope
from marketplace.events.models import OutboxEvent, ProcessedEvent
from notifications.models import Notification
from segmentation import handlers as segmentation
from segmentation.models import CustomerOrder, CustomerProfile
from tests.factories import BuyerFactory, ProductFactory
from tests.subscribers.test_cancellation import cancelled_envelope, place, processed, profile_of, publish
from tests.support.broker import queue_depth
from tests.support.waiting import eventually
from tests.support.workers import record_dead_letters

SEGMENT_CHANGED = "customer.segment_changed"
# The order subscribers: they do not act on customer.segment_changed, so they ack and skip it.
ORDER_SUBSCRIBERS = ("order_confirmation", "seller_notification", "customer_segmentation")


def assert_valid(envelope: dict) -> None:
    """Valid for our own runtime validator and for the reference implementation, formats checked."""
    assert validate_envelope(envelope) is envelope
    schema = json.loads(schema_path(SEGMENT_CHANGED, 1).read_text())
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(envelope)


def segment_changes() -> list[dict]:
    return list(
        OutboxEvent.objects.filter(event_type=SEGMENT_CHANGED).order_by("id").values_list("envelope", flat=True)
    )


@pytest.fixture
def published(monkeypatch):
    """What this process hands its publisher after each commit (published nowhere, only recorded)."""
    handed_over: list[dict] = []
    monkeypatch.setattr(outbox, "publish_after_commit", lambda outbox_id, envelope: handed_over.append(envelope))
    return handed_over


def changes_published(handed_over: list[dict]) -> list[dict]:
    return [envelope for envelope in handed_over if envelope["type"] == SEGMENT_CHANGED]


@pytest.fixture
def almost_returning(transactional_db, published, settings):
    """A buyer one order short of "returning", that order placed (its event not handled yet)."""
    buyer = BuyerFactory()
    product = ProductFactory(price=Decimal("10.00"), stock=100)
    counted = [place(buyer, (product, 1)) for _ in range(settings.SEGMENT_RETURNING_ORDERS - 1)]
    for envelope in counted:
        segmentation.update_customer_segment(envelope=envelope)
    return buyer, counted, place(buyer, (product, 1))


# --- the handler, called directly -----------------------------------------------------------------


def test_crossing_a_threshold_emits_one_valid_event_after_the_commit(almost_returning, published, settings):
    buyer, _, crossing = almost_returning
    count = settings.SEGMENT_RETURNING_ORDERS
    assert segment_changes() == []

    assert segmentation.update_customer_segment(envelope=crossing) is True
    [changed] = segment_changes()
    assert_valid(changed)
    assert changed["correlation_id"] == crossing["correlation_id"]
    assert changed["data"] == {
        "buyer": crossing["data"]["buyer"],
        "previous_segment": "new",
        "segment": "returning",
        "profile": {"order_count": count, "lifetime_spend": f"{10 * count}.00", "average_order_value": "10.00"},
        "caused_by": {
            "event_id": crossing["id"],
            "event_type": "order.placed",
            "order_id": crossing["data"]["order_id"],
        },
    }
    profile = CustomerProfile.objects.get(buyer=buyer)
    assert changed["occurred_at"] == rfc3339(profile.updated_at)  # when the profile changed
    assert changes_published(published) == [changed]  # handed to the publisher once, on commit

    # The same event again changes nothing and emits nothing.
    assert segmentation.update_customer_segment(envelope=crossing) is False
    assert len(segment_changes()) == 1

    # Its cancellation moves the buyer back: an event caused by the order.cancelled.
    cancelled = cancelled_envelope(crossing)
    assert segmentation.remove_cancelled_order(envelope=cancelled) is True
    back = segment_changes()[1]
    assert_valid(back)
    assert (back["data"]["previous_segment"], back["data"]["segment"]) == ("returning", "new")
    assert back["data"]["caused_by"] == {
        "event_id": cancelled["id"],
        "event_type": "order.cancelled",
        "order_id": crossing["data"]["order_id"],
    }
    assert back["data"]["profile"]["order_count"] == count - 1
    assert back["correlation_id"] == cancelled["correlation_id"]
    assert changes_published(published) == segment_changes()


def test_no_event_when_the_segment_stays(almost_returning, published):
    buyer, counted, _ = almost_returning
    another = place(buyer, (ProductFactory(price=Decimal("5.00")), 1))
    segmentation.remove_cancelled_order(envelope=cancelled_envelope(another))  # not counted: no change at all
    assert segmentation.remove_cancelled_order(envelope=cancelled_envelope(counted[0])) is True  # new stays new
    assert segment_changes() == []
    assert changes_published(published) == []


def test_a_first_order_over_the_high_value_spend_moves_a_new_buyer_to_high_value(transactional_db, published, settings):
    buyer = BuyerFactory()
    price = Decimal(settings.SEGMENT_HIGH_VALUE_SPEND)
    segmentation.update_customer_segment(envelope=place(buyer, (ProductFactory(price=price), 1)))
    [changed] = segment_changes()
    assert_valid(changed)
    assert (changed["data"]["previous_segment"], changed["data"]["segment"]) == ("new", "high_value")
    assert changed["data"]["profile"]["lifetime_spend"] == str(price.quantize(Decimal("0.01")))


class ProfileStoreFailed(Exception):
    """Stands for anything failing after the event was written, before the transaction commits."""


def test_a_rolled_back_profile_change_emits_nothing(almost_returning, published, monkeypatch):
    buyer, _, crossing = almost_returning
    before = profile_of(buyer)
    real_enqueue = segmentation.enqueue_event

    def enqueue_then_fail(envelope):
        row = real_enqueue(envelope)
        assert OutboxEvent.objects.filter(pk=row.pk).exists()  # written, in the open transaction
        raise ProfileStoreFailed("the transaction fails after the event was written")

    with monkeypatch.context() as failing:
        failing.setattr(segmentation, "enqueue_event", enqueue_then_fail)
        with pytest.raises(ProfileStoreFailed):
            segmentation.update_customer_segment(envelope=crossing)

    assert segment_changes() == []
    assert changes_published(published) == []
    assert profile_of(buyer) == before
    assert not processed("customer_segmentation", crossing)
    assert not CustomerOrder.objects.filter(order_id=crossing["data"]["order_id"]).exists()

    # The retry, with nothing failing, makes the change and emits its event once.
    assert segmentation.update_customer_segment(envelope=crossing) is True
    assert len(segment_changes()) == 1
    assert changes_published(published) == segment_changes()
    assert profile_of(buyer)[3] == "returning"


# --- real worker processes ----------------------------------------------------------------------


@pytest.mark.workers
def test_a_threshold_crossed_publishes_one_segment_changed_event_which_the_order_subscribers_skip(
    workers, faults, shop, place_order, event_tap, broker, broker_url, settings
):
    placed = [place_order(shop.buyer, (shop.product, 1))[1] for _ in range(settings.SEGMENT_RETURNING_ORDERS)]
    crossing = placed[-1]

    def tapped_changes() -> list[dict]:
        bodies = [json.loads(message.body) for message in event_tap.drain(timeout=2)]
        return [body for body in bodies if body["type"] == SEGMENT_CHANGED]

    changes: list[dict] = []

    def some_tapped() -> list[dict]:
        changes.extend(tapped_changes())
        return changes

    eventually(some_tapped, timeout=20, message="customer.segment_changed on the fanout")
    [changed] = changes + tapped_changes()  # and no second one
    assert_valid(changed)
    assert changed["correlation_id"] == crossing["correlation_id"]
    assert changed["data"]["caused_by"] == {
        "event_id": crossing["id"],
        "event_type": "order.placed",
        "order_id": crossing["data"]["order_id"],
    }
    assert (changed["data"]["previous_segment"], changed["data"]["segment"]) == ("new", "returning")
    row = eventually(
        lambda: OutboxEvent.objects.filter(event_id=changed["id"], published_at__isnull=False).first(),
        message="the outbox row marked published",
    )
    assert row.envelope == changed

    # The crossing order.placed again, behind the segment_changed event on every order subscriber's
    # queue: once each has run it, each has dealt with the segment_changed event before it.
    skipping = [topology.subscriber_named(name) for name in ORDER_SUBSCRIBERS]
    assert all(SEGMENT_CHANGED not in subscriber.event_types for subscriber in skipping)
    publish(broker_url, crossing)
    for subscriber in skipping:
        eventually(
            lambda task=subscriber.task: (
                len([s for s in faults.task_starts(task) if s["event_id"] == crossing["id"]]) == 2
            ),
            timeout=20,
            message=f"{subscriber.name} to run the redelivered order.placed",
        )
    skipping_tasks = {subscriber.task for subscriber in skipping}
    assert not [s for s in faults.task_starts() if s["event_id"] == changed["id"] and s["task"] in skipping_tasks]
    assert not ProcessedEvent.objects.filter(event_id=changed["id"], subscriber__in=ORDER_SUBSCRIBERS).exists()
    assert not Notification.objects.filter(event_id=changed["id"]).exists()
    assert record_dead_letters(subscriber__in=ORDER_SUBSCRIBERS) == []
    for subscriber in skipping:
        assert queue_depth(broker, subscriber.dead_letter_queue_name) == 0
    # The redelivered order.placed changed nothing, so nothing more was published.
    assert tapped_changes() == []
    assert OutboxEvent.objects.filter(event_type=SEGMENT_CHANGED).count() == 1
    assert profile_of(shop.buyer)[0] == len(placed)
