"""An operator deletes a subscriber's queue while its worker runs: the worker puts it back, bound,
alerts, and backfills from the outbox what the fanout published while it was gone."""

import pytest

from marketplace.events import topology
from marketplace.events.models import ProcessedEvent
from tests.support.waiting import eventually

pytestmark = [pytest.mark.workers]


def test_a_deleted_queue_comes_back_bound_and_the_events_it_missed_are_backfilled(
    workers, faults, shop, place_order, broker
):
    subscriber = topology.subscriber_named("customer_segmentation")
    # A worker that has been consuming a while, not one whose consume is still being set up.
    _, first = place_order(shop.buyer, (shop.product, 1))
    eventually(
        lambda: ProcessedEvent.objects.filter(subscriber=subscriber.name, event_id=first["id"]).exists(),
        message="the worker to consume its queue",
    )
    broker.default_channel.queue_delete(subscriber.queue_name)
    # Published at once, while the queue is gone: the fanout delivers it to the other queues only.
    _, missed = place_order(shop.buyer, (shop.product, 1))

    def consumed_again():
        try:
            return broker.channel().queue_declare(subscriber.queue_name, passive=True).consumer_count == 1
        except broker.channel_errors:
            return False

    eventually(consumed_again, timeout=30, message="the worker to re-declare and consume its queue")
    _, after = place_order(shop.buyer, (shop.product, 1))
    for envelope in (missed, after):
        eventually(
            lambda envelope=envelope: ProcessedEvent.objects.filter(
                subscriber=subscriber.name, event_id=envelope["id"]
            ).exists(),
            timeout=30,
            message="every event to reach the re-declared queue, through the fanout or the backfill",
        )
    alerts = eventually(
        lambda: [m for m in faults.emails() if "was deleted" in m["subject"]], message="the alert to the team"
    )
    assert subscriber.queue_name in alerts[0]["subject"]
    assert "republished" in alerts[0]["body"]
