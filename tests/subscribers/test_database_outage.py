"""Our own database going away is not a downstream failing: no retry budget spent, nothing lost.

The worker reaches PostgreSQL through a TCP proxy the test cuts: its open connections die and new
ones are refused, as when the database host goes away, while the test keeps its own connection.
"""

import time

import pytest
from django.db import connection

from marketplace.events import topology
from marketplace.events.models import ProcessedEvent
from segmentation.models import CustomerProfile
from tests.support.broker import queue_depth
from tests.support.waiting import eventually
from tests.support.workers import TEST_RETRY_ENV, record_dead_letters

pytestmark = [pytest.mark.workers]

MAX_RETRIES = int(TEST_RETRY_ENV["SUBSCRIBER_MAX_RETRIES"])


@pytest.mark.long
def test_a_database_outage_longer_than_the_retry_budget_loses_and_dead_letters_nothing(
    workers, faults, shop, place_order, replace_worker, database_proxy, broker
):
    database = connection.settings_dict
    replace_worker(
        "customer_segmentation",
        DATABASE_URL=f"postgres://{database['USER']}@127.0.0.1:{database_proxy.port}/{database['NAME']}",
    )
    database_proxy.cut()
    orders = [place_order(shop.buyer, (shop.product, 1))[1] for _ in range(5)]
    # Long enough for every event to fail many more times than MAX_RETRIES allows.
    outage_seconds = 6
    time.sleep(outage_seconds)
    starts = faults.task_starts("segmentation.update_customer_segment")
    assert len(starts) > len(orders) * (MAX_RETRIES + 1)
    database_proxy.restore()

    eventually(
        lambda: ProcessedEvent.objects.filter(subscriber="customer_segmentation").count() == len(orders),
        timeout=15,
        message="every event counted once the database is back",
    )
    processed = ProcessedEvent.objects.filter(subscriber="customer_segmentation").values_list("event_id", flat=True)
    assert {str(event_id) for event_id in processed} == {envelope["id"] for envelope in orders}
    assert CustomerProfile.objects.get(buyer=shop.buyer).order_count == len(orders)
    assert record_dead_letters() == []
    subscriber = topology.subscriber_named("customer_segmentation")
    assert queue_depth(broker, subscriber.dead_letter_queue_name) == 0
