"""Retries with backoff on the failing subscriber's own queue; dead letters, alerts, replay."""

import hashlib
import hmac
import itertools
import json

import pytest
from django.core.management import call_command
from kombu import Connection

from marketplace.events import dead_letters as dead_letter
from marketplace.events import topology
from marketplace.events.models import DeliveryAttempt, FailedEvent, FailedEventReplay, ProcessedEvent
from marketplace.events.services import failed_event_archive, failed_event_replay
from segmentation.models import CustomerProfile
from tests.support.broker import queue_depth
from tests.support.waiting import eventually
from tests.support.workers import TEST_RETRY_ENV, record_dead_letters

pytestmark = [pytest.mark.workers]

MAX_RETRIES = int(TEST_RETRY_ENV["SUBSCRIBER_MAX_RETRIES"])
BACKOFF = int(TEST_RETRY_ENV["SUBSCRIBER_RETRY_BACKOFF"])
CONFIRMATION = "notifications.send_order_confirmation"
SELLERS = "notifications.notify_sellers"
SEGMENTATION = "segmentation.update_customer_segment"


def test_a_subscriber_failing_twice_then_succeeding_retries_with_backoff_on_its_own_queue(
    workers, faults, shop, place_order, seller_webhook, broker
):
    faults.fail_email(2)
    _, envelope = place_order(shop.buyer, (shop.product, 1))

    emails = eventually(lambda: faults.emails(), timeout=20, message="the confirmation email")
    assert [mail["to"] for mail in emails] == [[shop.buyer.email]]
    assert emails[0]["event_id"] == envelope["id"]

    starts = faults.task_starts(CONFIRMATION)
    assert [start["retries"] for start in starts] == [0, 1, 2]
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(starts)]
    # No jitter in tests: countdown = backoff * 2**retries → 1 s, then 2 s (plus worker latency).
    for gap, expected in zip(gaps, [BACKOFF, 2 * BACKOFF], strict=True):
        assert expected - 0.1 <= gap <= expected + 1.5, gaps
    # Retries are published straight to the subscriber's queue, never through the fanout.
    for retry in starts[1:]:
        assert retry["delivery_info"] == {"exchange": "", "routing_key": "marketplace.order_confirmation"}

    # The email is sent before the marker's transaction commits: wait for the commit.
    eventually(
        lambda: ProcessedEvent.objects.filter(subscriber="order_confirmation", event_id=envelope["id"]).count() == 1,
        message="the confirmation's marker",
    )
    # The delivery history: each failed attempt, then the success that followed them.
    history = eventually(
        lambda: (
            list(DeliveryAttempt.objects.filter(subscriber="order_confirmation", event_id=envelope["id"]))
            if DeliveryAttempt.objects.filter(outcome="succeeded").exists()
            else None
        ),
        message="the delivery history",
    )
    assert [(a.attempt, a.outcome) for a in history] == [(1, "retrying"), (2, "retrying"), (3, "succeeded")]
    assert all(a.worker.startswith("order_confirmation") and a.duration_ms > 0 for a in history), history
    assert "EmailNotSent" in history[0].error
    # First-time successes leave no history.
    assert not DeliveryAttempt.objects.exclude(subscriber="order_confirmation").exists()
    assert len(seller_webhook.accepted()) == 1
    assert eventually(lambda: CustomerProfile.objects.filter(buyer=shop.buyer).exists(), message="segmentation")
    # The other subscribers saw the event exactly once: nothing extra reached their queues.
    assert len(faults.task_starts(SELLERS)) == 1
    assert len(faults.task_starts(SEGMENTATION)) == 1
    for name in ("seller_notification", "customer_segmentation"):
        assert queue_depth(broker, topology.subscriber_named(name).queue_name) == 0


def _give_up_on_seller_notification(faults, shop, place_order, seller_webhook):
    seller_webhook.default_status = 503
    _, envelope = place_order(shop.buyer, (shop.product, 2))
    [failed] = eventually(
        lambda: record_dead_letters(subscriber="seller_notification", event_id=envelope["id"]),
        timeout=30,
        message="a FailedEvent for seller_notification",
    )
    return envelope, failed


def test_a_subscriber_that_always_fails_is_dead_lettered_recorded_and_alerted(
    workers, faults, shop, place_order, seller_webhook, broker, broker_url, mailoutbox
):
    envelope, failed = _give_up_on_seller_notification(faults, shop, place_order, seller_webhook)

    assert len(faults.task_starts(SELLERS)) == MAX_RETRIES + 1
    assert len(seller_webhook.requests) == MAX_RETRIES + 1
    assert failed.status == FailedEvent.Status.FAILED
    assert failed.attempts == MAX_RETRIES + 1
    assert failed.event_type == "order.placed"
    assert failed.payload == envelope
    assert failed.exception_class == "marketplace.events.errors.TransientDownstreamError"
    assert "503" in failed.exception_message
    assert "Traceback" in failed.traceback
    assert failed.first_failed_at < failed.last_failed_at
    assert failed.in_dead_letter_queue
    # The dead letter itself carries what the admin shows: recording it needed no database.
    assert failed.headers["marketplace-attempts"] == MAX_RETRIES + 1
    assert failed.headers["marketplace-exception-class"] == failed.exception_class

    dead_letters = topology.subscriber_named("seller_notification").dead_letter_queue_name
    eventually(lambda: queue_depth(broker, dead_letters) == 1, message="one message in the dead-letter queue")

    alerts = [mail for mail in mailoutbox if mail.to == ["team@marketplace.localhost"]]
    assert len(alerts) == 1
    assert envelope["id"] in alerts[0].subject
    # Recording it again (the recorder crashed before its ack) changes nothing and alerts no one.
    with Connection(broker_url) as conn:
        message = topology.subscriber_named("seller_notification").dead_letter_queue(conn.default_channel).get()
        dead_letter.record(
            subscriber=topology.subscriber_named("seller_notification"),
            body=dead_letter.body_bytes(message),
            headers=message.headers,
        )
    assert FailedEvent.objects.get().attempts == MAX_RETRIES + 1
    assert len(mailoutbox) == 1
    log = workers["seller_notification"].log_path.read_text()
    assert f"subscriber seller_notification gave up on event {envelope['id']}" in log

    # The other subscribers are unaffected.
    assert eventually(lambda: [m for m in faults.emails() if m["to"] == [shop.buyer.email]], message="confirmation")
    assert eventually(lambda: CustomerProfile.objects.filter(buyer=shop.buyer).exists(), message="segmentation")
    assert len(faults.task_starts(CONFIRMATION)) == 1
    assert len(faults.task_starts(SEGMENTATION)) == 1
    for name in ("order_confirmation", "customer_segmentation"):
        assert queue_depth(broker, topology.subscriber_named(name).dead_letter_queue_name) == 0
    assert FailedEvent.objects.count() == 1


def test_replay_after_the_fault_is_fixed_has_its_effect_once(
    workers, faults, shop, place_order, seller_webhook, broker, admin_user
):
    envelope, failed = _give_up_on_seller_notification(faults, shop, place_order, seller_webhook)
    seller_webhook.default_status = 200

    # Replaying twice (both before the first one ran) still notifies the seller once.
    failed_event_replay(failed_event=failed, requested_by=admin_user, via="admin")
    call_command("replay_failed_events", "--subscriber", "seller_notification")

    eventually(
        lambda: FailedEvent.objects.get(pk=failed.pk).status == FailedEvent.Status.RESOLVED,
        timeout=20,
        message="the failed event to be resolved",
    )
    eventually(lambda: len(faults.task_starts(SELLERS)) == MAX_RETRIES + 3, message="both replays to run")
    accepted = seller_webhook.accepted()
    assert len(accepted) == 1
    request = accepted[0]
    assert request["headers"]["X-Marketplace-Event-Id"] == envelope["id"]
    body = json.dumps(request["body"], separators=(",", ":")).encode()
    signature = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert request["headers"]["X-Marketplace-Signature"] == f"sha256={signature}"
    assert [line["sku"] for line in request["body"]["lines"]] == [shop.product.sku]

    resolved = FailedEvent.objects.get(pk=failed.pk)
    assert resolved.resolved_at is not None
    # Resolved failures leave the dead-letter queue: its depth is the number of open failures.
    record_dead_letters()
    assert queue_depth(broker, topology.subscriber_named("seller_notification").dead_letter_queue_name) == 0
    assert not FailedEvent.objects.get(pk=failed.pk).in_dead_letter_queue
    audit = list(FailedEventReplay.objects.filter(failed_event=failed).order_by("requested_at"))
    assert [(entry.via, entry.requested_by) for entry in audit] == [("admin", admin_user), ("command", None)]
    assert {entry.outcome for entry in audit} == {"succeeded"}
    outcomes = list(
        DeliveryAttempt.objects.filter(subscriber="seller_notification", event_id=envelope["id"]).values_list(
            "outcome", "replay_of"
        )
    )
    assert outcomes[: MAX_RETRIES + 1] == [("retrying", None)] * MAX_RETRIES + [("dead_lettered", None)]
    assert ("succeeded", failed.pk) in outcomes[MAX_RETRIES + 1 :]
    # Replays went to seller_notification's queue only.
    assert len(faults.task_starts(CONFIRMATION)) == 1
    assert len(faults.task_starts(SEGMENTATION)) == 1


def test_a_replay_that_fails_again_is_marked_failed_with_the_new_error(
    workers, faults, shop, place_order, seller_webhook, broker
):
    _envelope, failed = _give_up_on_seller_notification(faults, shop, place_order, seller_webhook)
    seller_webhook.default_status = 410  # the seller's endpoint now refuses: a permanent failure

    failed_event_replay(failed_event=failed, via="command")

    def failed_again():
        record = FailedEvent.objects.get(pk=failed.pk)
        return record.status == FailedEvent.Status.FAILED and "410" in record.exception_message and record

    record = eventually(lambda: record_dead_letters() and failed_again(), timeout=20, message="the replay to fail")
    assert record.exception_class == "notifications.handlers.SellerWebhookRejected"
    assert [entry.outcome for entry in record.replays.all()] == ["failed"]
    assert record.attempts == MAX_RETRIES + 2  # a permanent failure is not retried
    assert len(faults.task_starts(SELLERS)) == MAX_RETRIES + 2
    # One open failure, one message in the dead-letter queue (the replayed one was removed).
    record_dead_letters()
    dead = topology.subscriber_named("seller_notification").dead_letter_queue_name
    eventually(lambda: queue_depth(broker, dead) == 1, message="one dead letter for the one open failure")


def test_archiving_a_failure_removes_its_dead_letter(workers, faults, shop, place_order, seller_webhook, broker):
    _envelope, failed = _give_up_on_seller_notification(faults, shop, place_order, seller_webhook)
    dead = topology.subscriber_named("seller_notification").dead_letter_queue_name
    assert queue_depth(broker, dead) == 1

    failed_event_archive(failed_event=failed)
    record_dead_letters()

    assert queue_depth(broker, dead) == 0
    assert FailedEvent.objects.get(pk=failed.pk).status == FailedEvent.Status.ARCHIVED
