"""RabbitMQ blocks publishers (a memory alarm): orders answer in normal time, events wait in the
outbox, and go out once the alarm clears.

The alarm is raised for real, on the test cluster's nodes (bin/rabbitmq-cluster, started once per
session, about a minute), never on the shared broker: every publisher on a node in alarm is blocked.
"""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.core.management import call_command

from marketplace.events.models import OutboxEvent
from marketplace.events.outbox import on_commit_publisher
from tests.factories import BuyerFactory, ProductFactory
from tests.faults.conftest import NODES

pytestmark = [pytest.mark.broker, pytest.mark.cluster]

ORDERS = 10
# A request never waits for the broker; this is a bound for a busy machine, not for the broker.
NORMAL_ORDER_SECONDS = 0.5


def memory_alarm(rabbit_cluster, *, on: bool) -> None:
    watermark = ["absolute", "1"] if on else ["0.4"]
    for node in NODES:
        rabbit_cluster.ctl("set_vm_memory_high_watermark", *watermark, node=node)


@pytest.mark.timeout(300)
def test_orders_answer_in_normal_time_while_rabbitmq_blocks_publishers(
    transactional_db, rabbit_cluster, on_cluster, client_for
):
    client = client_for(BuyerFactory())
    product = ProductFactory(stock=100)

    def place() -> float:
        started = time.monotonic()
        response = client.post("/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json")
        assert response.status_code == 201, response.content
        return time.monotonic() - started

    place()  # the publisher thread connects and publishes while all is well
    assert on_commit_publisher.flush()
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()

    memory_alarm(rabbit_cluster, on=True)
    try:
        time.sleep(1)  # the nodes notice their alarm and announce connection.blocked
        durations = [place() for _ in range(ORDERS)]
        assert on_commit_publisher.flush(timeout=30)
        assert max(durations) < NORMAL_ORDER_SECONDS, sorted(durations)
        pending = OutboxEvent.objects.filter(published_at__isnull=True)
        assert pending.count() == ORDERS
        # Handed to the relay rather than left claimed by a thread that cannot publish.
        assert not pending.filter(claimed_until__isnull=False).exists()
    finally:
        memory_alarm(rabbit_cluster, on=False)

    out = StringIO()
    call_command("relay_outbox", "--once", stdout=out)
    assert f"published {ORDERS}, failed 0" in out.getvalue()
