"""An operator deletes a subscriber's queue while its worker runs: the worker puts it back, bound."""

import pytest

from marketplace.events import topology
from marketplace.events.models import ProcessedEvent
from tests.conftest import eventually

pytestmark = [pytest.mark.workers]


def test_a_worker_redeclares_its_deleted_queue_with_the_fanout_binding(workers, shop, place_order, broker):
    subscriber = topology.subscriber_named("customer_segmentation")
    broker.default_channel.queue_delete(subscriber.queue_name)

    def consumed_again():
        try:
            return broker.channel().queue_declare(subscriber.queue_name, passive=True).consumer_count == 1
        except broker.channel_errors:
            return False

    eventually(consumed_again, timeout=30, message="the worker to re-declare and consume its queue")
    _, envelope = place_order(shop.buyer, (shop.product, 1))
    eventually(
        lambda: ProcessedEvent.objects.filter(subscriber=subscriber.name, event_id=envelope["id"]).exists(),
        timeout=15,
        message="the event to reach the re-declared queue through the fanout",
    )
