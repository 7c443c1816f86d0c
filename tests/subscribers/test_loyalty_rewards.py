"""loyalty_rewards: customer.segment_changed into loyal or high value emails the buyer one reward code,
once per (buyer, segment), with real worker processes; into any other segment, nothing.

The segment_changed envelopes are built here, as the contract
(marketplace/events/schemas/customer.segment_changed.v1.json) describes them. What the handler
decides is tested by calling it; what needs the queue (routing, retries, dead letters, backfill, and
segmentation emitting the events) goes through the real worker processes.
"""

from __future__ import annotations

import itertools
import socket
import uuid
from contextlib import closing
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from loyalty import handlers
from loyalty.models import RewardCode
from loyalty.selectors import reward_effects
from marketplace.events import topology
from marketplace.events.broker import BrokerPublisher
from marketplace.events.envelope import build_envelope, validate_envelope
from marketplace.events.models import DeliveryAttempt, FailedEvent, OutboxEvent, ProcessedEvent
from marketplace.events.services import failed_event_replay
from marketplace.mail import EmailNotSent
from tests.factories import BuyerFactory, ProductFactory
from tests.support.broker import queue_depth
from tests.support.waiting import eventually
from tests.support.workers import TEST_RETRY_ENV, record_dead_letters, worker_is_idle

LOYALTY = topology.subscriber_named("loyalty_rewards")
OTHERS = [s for s in topology.SUBSCRIBERS if s is not LOYALTY]
TASK = LOYALTY.task
SEGMENT_CHANGED = "customer.segment_changed"
MAX_RETRIES = int(TEST_RETRY_ENV["SUBSCRIBER_MAX_RETRIES"])
TEST_EMAIL_BACKEND = "email backend tests.support.faults.ControlledEmailBackend"


def segment_changed(buyer, *, segment: str, previous: str = "returning", orders: int = 5, spent: str = "250.00"):
    """A customer.segment_changed v1 event: ``buyer`` moved from ``previous`` to ``segment``."""
    envelope = build_envelope(
        event_type=SEGMENT_CHANGED,
        version=1,
        data={
            "buyer": {"id": buyer.pk, "email": buyer.email, "name": buyer.get_full_name() or buyer.username},
            "previous_segment": previous,
            "segment": segment,
            "profile": {
                "order_count": orders,
                "lifetime_spend": spent,
                "average_order_value": str((Decimal(spent) / orders).quantize(Decimal("0.01"))),
            },
            "caused_by": {"event_id": str(uuid.uuid4()), "event_type": "order.placed", "order_id": 1},
        },
        occurred_at=timezone.now(),
        correlation_id=str(uuid.uuid4()),
    )
    return validate_envelope(envelope)


def publish(broker_url: str, *envelopes: dict) -> None:
    """To the fanout, with publisher confirms, as the outbox does."""
    with closing(BrokerPublisher(url=broker_url)) as publisher:
        for envelope in envelopes:
            publisher.publish(envelope)


def handled(*envelopes: dict) -> bool:
    """loyalty_rewards committed every one of ``envelopes`` (the email, if any, went out before)."""
    ids = [envelope["id"] for envelope in envelopes]
    return ProcessedEvent.objects.filter(subscriber=LOYALTY.name, event_id__in=ids).count() == len(ids)


def reward_emails(faults) -> list[dict]:
    return [mail for mail in faults.emails() if "reward code" in mail["body"]]


@pytest.fixture
def mail(settings, faults):
    """The handler called in this process, its email caught by the same edge the workers use."""
    settings.EMAIL_BACKEND = "tests.support.faults.ControlledEmailBackend"
    return faults


def test_a_buyer_turning_loyal_is_emailed_one_reward_code_once(db, mail):
    buyer = BuyerFactory()
    changed = segment_changed(buyer, segment="loyal")

    assert handlers.send_reward_code(envelope=changed) is True
    assert handlers.send_reward_code(envelope=changed) is False  # the same event delivered twice

    [sent] = mail.emails()
    [reward] = RewardCode.objects.all()
    assert (reward.buyer_id, reward.segment, str(reward.event_id)) == (buyer.pk, "loyal", changed["id"])
    assert sent["to"] == [buyer.email]
    assert sent["event_id"] == changed["id"]
    assert f"Your one-time reward code: {reward.code}" in sent["body"]
    assert "5 orders" in sent["body"]

    # Another event into the same segment (a cancellation took them out, an order brought them
    # back): they have its code already, so nothing is sent and no code is added.
    again = segment_changed(buyer, segment="loyal", orders=6, spent="300.00")
    assert handlers.send_reward_code(envelope=again) is False
    assert len(mail.emails()) == 1
    assert RewardCode.objects.count() == 1

    # The operator's trace view: what each event produced.
    [(label, url)] = reward_effects(changed)
    assert label.startswith(f"Loyal reward code {reward.code} for buyer {buyer.pk}")
    assert url == f"/admin/loyalty/rewardcode/{reward.pk}/change/"
    [(label, _)] = reward_effects(again)
    assert label.startswith(f"none sent by this event: buyer {buyer.pk} has had their Loyal reward code")


def test_each_rewarded_segment_has_its_own_code(db, mail):
    buyer = BuyerFactory()
    loyal = segment_changed(buyer, segment="loyal")
    high_value = segment_changed(buyer, segment="high_value", previous="loyal", orders=6, spent="1200.00")

    assert handlers.send_reward_code(envelope=loyal) is True
    assert handlers.send_reward_code(envelope=high_value) is True

    codes = dict(RewardCode.objects.values_list("segment", "code"))
    assert set(codes) == {"loyal", "high_value"}
    assert codes["loyal"] != codes["high_value"]
    by_event = {sent["event_id"]: sent for sent in mail.emails()}
    assert set(by_event) == {loyal["id"], high_value["id"]}
    assert codes["high_value"] in by_event[high_value["id"]]["body"]
    assert "spent 1200.00" in by_event[high_value["id"]]["body"]


def test_a_buyer_moving_to_another_segment_gets_nothing(db, mail):
    buyer = BuyerFactory()
    returning = segment_changed(buyer, segment="returning", previous="new", orders=2, spent="40.00")
    back_to_new = segment_changed(buyer, segment="new", previous="returning", orders=1, spent="20.00")

    assert handlers.send_reward_code(envelope=returning) is False
    assert handlers.send_reward_code(envelope=back_to_new) is False

    assert handled(returning, back_to_new)  # claimed, so a redelivery does nothing either
    assert mail.emails() == []
    assert not RewardCode.objects.exists()
    assert reward_effects(returning) == []


@pytest.mark.workers
def test_an_order_placed_reaching_its_queue_is_acknowledged_and_skipped(
    workers, faults, shop, place_order, broker, broker_url
):
    _, placed = place_order(shop.buyer, (shop.product, 1))
    eventually(
        lambda: OutboxEvent.objects.filter(event_id=placed["id"], published_at__isnull=False).exists(),
        message="the order.placed event to be published",
    )
    # One message at a time, in queue order: once this later event is handled, the order.placed
    # ahead of it in loyalty_rewards' queue was settled.
    changed = segment_changed(shop.buyer, segment="loyal")
    publish(broker_url, changed)

    eventually(lambda: handled(changed), message="the event behind the order.placed")
    assert [start["event_id"] for start in faults.task_starts(TASK)] == [changed["id"]]
    assert not ProcessedEvent.objects.filter(subscriber=LOYALTY.name, event_id=placed["id"]).exists()
    assert list(RewardCode.objects.values_list("event_id", flat=True)) == [uuid.UUID(changed["id"])]
    assert record_dead_letters(subscriber=LOYALTY.name) == []
    assert queue_depth(broker, LOYALTY.dead_letter_queue_name) == 0
    assert not DeliveryAttempt.objects.filter(subscriber=LOYALTY.name).exists()
    # The order's own subscribers handled it as usual.
    eventually(
        lambda: ProcessedEvent.objects.filter(event_id=placed["id"]).count() == len(OTHERS),
        message="the order's subscribers",
    )


@pytest.mark.workers
def test_a_failing_mail_server_is_retried_on_its_own_queue_then_the_code_is_sent_once(
    workers, faults, broker, broker_url
):
    faults.fail_email(2)
    buyer = BuyerFactory()
    changed = segment_changed(buyer, segment="loyal")

    publish(broker_url, changed)

    eventually(lambda: handled(changed), timeout=20, message="the reward after two failures")
    [mail] = faults.emails()
    [reward] = RewardCode.objects.all()
    assert reward.code in mail["body"]
    # The code is derived from the event: every attempt (and any duplicate email) carries the stored one.
    assert reward.code == handlers.reward_code(event_id=changed["id"])
    starts = faults.task_starts(TASK)
    assert [start["retries"] for start in starts] == [0, 1, 2]
    for earlier, later in itertools.pairwise(starts):
        assert later["at"] - earlier["at"] >= 0.9
    for retry in starts[1:]:
        assert retry["delivery_info"] == {"exchange": "", "routing_key": LOYALTY.queue_name}
    history = eventually(
        lambda: (
            list(DeliveryAttempt.objects.filter(subscriber=LOYALTY.name, event_id=changed["id"]))
            if DeliveryAttempt.objects.filter(outcome="succeeded").exists()
            else None
        ),
        message="the delivery history",
    )
    assert [(a.attempt, a.outcome) for a in history] == [(1, "retrying"), (2, "retrying"), (3, "succeeded")]
    assert history[0].error.startswith(f"marketplace.mail.EmailNotSent: loyal reward code for buyer {buyer.pk}")
    assert f"via {TEST_EMAIL_BACKEND}" in history[0].error
    for other in OTHERS:
        assert queue_depth(broker, other.queue_name) == 0


@pytest.mark.workers
def test_a_mail_server_that_stays_down_dead_letters_the_event_naming_it_and_a_replay_sends_once(
    workers, faults, broker, broker_url
):
    faults.fail_email("always")
    buyer = BuyerFactory()
    changed = segment_changed(buyer, segment="high_value", previous="returning", orders=3, spent="1500.00")

    publish(broker_url, changed)

    [failed] = eventually(
        lambda: record_dead_letters(subscriber=LOYALTY.name, event_id=changed["id"]),
        timeout=30,
        message="a FailedEvent for loyalty_rewards",
    )
    assert failed.status == FailedEvent.Status.FAILED
    assert failed.attempts == MAX_RETRIES + 1
    assert failed.event_type == SEGMENT_CHANGED
    assert failed.payload == changed
    assert failed.exception_class == "marketplace.mail.EmailNotSent"
    assert failed.exception_message.startswith(
        f"high_value reward code for buyer {buyer.pk} to {buyer.email} via {TEST_EMAIL_BACKEND}: EmailProviderDown"
    )
    assert len(faults.task_starts(TASK)) == MAX_RETRIES + 1
    assert faults.emails() == []
    assert not RewardCode.objects.exists()
    assert not handled(changed)
    eventually(lambda: queue_depth(broker, LOYALTY.dead_letter_queue_name) == 1, message="its dead letter")
    for other in OTHERS:
        assert queue_depth(broker, other.dead_letter_queue_name) == 0
    assert FailedEvent.objects.count() == 1
    assert f"subscriber loyalty_rewards gave up on event {changed['id']}" in (
        workers[LOYALTY.name].log_path.read_text()
    )

    # The mail server is back: a replay sends the code once, even when requested twice.
    faults.heal()
    for _ in range(2):
        failed_event_replay(failed_event=failed, via="command")
    eventually(
        lambda: FailedEvent.objects.get(pk=failed.pk).status == FailedEvent.Status.RESOLVED,
        timeout=20,
        message="the failed event to be resolved",
    )
    eventually(lambda: len(faults.task_starts(TASK)) == MAX_RETRIES + 3, message="both replays to run")
    eventually(lambda: worker_is_idle(workers[LOYALTY.name]), message="the loyalty worker to be idle")
    [mail] = faults.emails()
    [reward] = RewardCode.objects.all()
    assert reward.segment == "high_value"
    assert reward.code in mail["body"]


@pytest.mark.workers
def test_backfill_republishes_retained_segment_changes_to_loyalty_rewards_only(
    workers, faults, broker, broker_url, event_tap
):
    alice, bob, carol = BuyerFactory(), BuyerFactory(), BuyerFactory()
    changes = [
        segment_changed(alice, segment="loyal"),
        segment_changed(bob, segment="high_value", previous="new", orders=1, spent="1000.00"),
        segment_changed(carol, segment="returning", previous="new", orders=2, spent="30.00"),
    ]
    three_hours_ago = timezone.now() - timedelta(hours=3)
    # Published long ago, retained in the outbox; an order event of the same hour is not asked for.
    rows = [
        OutboxEvent.objects.create(
            event_id=envelope["id"], event_type=envelope["type"], envelope=envelope, published_at=three_hours_ago
        )
        for envelope in changes
    ]
    order_event = {"id": str(uuid.uuid4()), "type": "order.placed", "version": 1, "data": {"order_id": 1}}
    rows.append(
        OutboxEvent.objects.create(
            event_id=order_event["id"], event_type="order.placed", envelope=order_event, published_at=three_hours_ago
        )
    )
    OutboxEvent.objects.filter(id__in=[row.id for row in rows]).update(created_at=three_hours_ago)
    since = (timezone.now() - timedelta(hours=4)).isoformat()

    def backfill() -> str:
        out = StringIO()
        call_command(
            "backfill_events", "--subscriber", LOYALTY.name, "--since", since, "--type", SEGMENT_CHANGED, stdout=out
        )
        return out.getvalue()

    assert f"republished 3 of 3 event(s) to {LOYALTY.queue_name}" in backfill()

    eventually(lambda: handled(*changes), message="the backfilled changes")
    assert sorted(RewardCode.objects.values_list("buyer_id", "segment")) == sorted(
        [(alice.pk, "loyal"), (bob.pk, "high_value")]
    )
    assert sorted(mail["to"][0] for mail in faults.emails()) == sorted([alice.email, bob.email])
    # Straight to loyalty_rewards' queue: nothing went through the fanout, no other subscriber saw them.
    assert event_tap.drain() == []
    assert {start["task"] for start in faults.task_starts()} == {TASK}
    assert not ProcessedEvent.objects.exclude(subscriber=LOYALTY.name).exists()
    for other in OTHERS:
        assert queue_depth(broker, other.queue_name) == 0
        assert queue_depth(broker, other.dead_letter_queue_name) == 0

    # Safe to repeat: every event runs again, nothing is sent again.
    backfill()
    eventually(lambda: len(faults.task_starts(TASK)) == 6, message="the second backfill to run")
    eventually(lambda: worker_is_idle(workers[LOYALTY.name]), message="the loyalty worker to be idle")
    assert len(faults.emails()) == 2
    assert RewardCode.objects.count() == 2
    assert event_tap.drain() == []


@pytest.mark.workers
def test_a_buyer_placing_orders_until_loyal_is_rewarded_once(workers, faults, client_for, settings):
    """End to end: segmentation emits customer.segment_changed as the buyer's orders add up."""
    buyer = BuyerFactory()
    product = ProductFactory(price=Decimal("10.00"), stock=100)

    for _ in range(settings.SEGMENT_LOYAL_ORDERS):
        response = client_for(buyer).post(
            "/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json"
        )
        assert response.status_code == 201, response.content

    reward = eventually(
        lambda: RewardCode.objects.filter(buyer_id=buyer.pk).first(), timeout=30, message="the reward code"
    )
    changes = eventually(
        lambda: (
            (rows := list(OutboxEvent.objects.filter(event_type=SEGMENT_CHANGED).order_by("id")))
            and handled(*(row.envelope for row in rows))
            and len(rows) >= 2
            and rows
        ),
        message="every segment change handled by loyalty_rewards",
    )
    assert [row.envelope["data"]["segment"] for row in changes] == ["returning", "loyal"]
    assert reward.segment == "loyal"
    assert reward.event_id == changes[-1].event_id
    [mail] = reward_emails(faults)
    assert mail["to"] == [buyer.email]
    assert mail["event_id"] == str(changes[-1].event_id)
    assert reward.code in mail["body"]
    assert RewardCode.objects.count() == 1


def test_the_failure_names_the_smtp_server(db, settings):
    """In this process, against a real SMTP client: a refused connection names the server."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    buyer = BuyerFactory()

    with pytest.raises(EmailNotSent, match=f"via mail server 127.0.0.1:{port}: ConnectionRefusedError"):
        handlers.send_reward_code(envelope=segment_changed(buyer, segment="loyal"))

    assert not RewardCode.objects.exists()
    assert not ProcessedEvent.objects.exists()


def test_the_admin_lists_reward_codes_read_only(admin_client):
    buyer = BuyerFactory()
    reward = RewardCode.objects.create(
        buyer_id=buyer.pk, segment="loyal", code=handlers.reward_code(event_id="e"), event_id=uuid.uuid4()
    )

    listing = admin_client.get("/admin/loyalty/rewardcode/")
    assert listing.status_code == 200
    assert reward.code in listing.content.decode()
    assert f"/admin/auth/user/{buyer.pk}/change/" in listing.content.decode()
    assert reverse("admin:events_trace_event", args=[reward.event_id]) in listing.content.decode()
    detail = admin_client.get(f"/admin/loyalty/rewardcode/{reward.pk}/change/")
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    assert admin_client.get("/admin/loyalty/rewardcode/add/").status_code == 403
    assert admin_client.post(f"/admin/loyalty/rewardcode/{reward.pk}/delete/").status_code == 403
    assert RewardCode.objects.count() == 1
