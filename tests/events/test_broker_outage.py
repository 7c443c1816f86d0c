"""RabbitMQ down: orders are still accepted quickly, and the relay publishes them once it is back.

"Down" is this process's broker address refusing connections, as a stopped node's does: stopping
the machine's RabbitMQ would cut every other test process's connections too. The fault ledger stops
a node for real, one of its own ("broker stop_app/start_app during intake", tests/faults/).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from io import StringIO
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.core.management import call_command

from marketplace.events.models import OutboxEvent
from marketplace.events.outbox import on_commit_publisher
from tests.factories import BuyerFactory, ProductFactory
from tests.faults.harness.servers import free_port

pytestmark = [pytest.mark.broker]

ORDERS = 20


@pytest.fixture
def broker_down(broker_url, settings):
    """For the block, BROKER_URL names a port where nothing listens (the same vhost and credentials)."""

    @contextmanager
    def down():
        settings.BROKER_URL = broker_url.replace(f":{urlparse(broker_url).port}/", f":{free_port()}/")
        try:
            yield
        finally:
            settings.BROKER_URL = broker_url

    return down


def test_orders_are_accepted_while_the_broker_is_down_and_relayed_once_it_is_back(
    transactional_db, event_tap, client_for, record_property, broker_down
):
    client = client_for(BuyerFactory())
    product = ProductFactory(stock=100)
    bound = settings.EVENTS_PUBLISH_TIMEOUT + 1.0
    durations = []

    with broker_down():
        for _ in range(ORDERS):
            started = time.monotonic()
            response = client.post("/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json")
            durations.append(time.monotonic() - started)
            assert response.status_code == 201, response.content
            assert durations[-1] < bound, f"order took {durations[-1]:.2f}s with the broker down (bound {bound}s)"

        assert OutboxEvent.objects.filter(published_at__isnull=True).count() == ORDERS
        health = client.get("/healthz")
        assert health.status_code == 200  # orders are still accepted: degraded, not down
        assert health.json()["status"] == "degraded"
        assert health.json()["broker"].startswith("error")
        assert health.json()["outbox_lag_seconds"] > 0

        assert on_commit_publisher.flush()  # it released its rows to the relay
    record_property("max_order_seconds_with_broker_down", round(max(durations), 3))
    out = StringIO()
    call_command("relay_outbox", "--once", stdout=out)

    assert f"published {ORDERS}, failed 0" in out.getvalue()
    messages = event_tap.drain(expected=ORDERS, timeout=20)
    delivered = sorted(message.properties["message_id"] for message in messages)
    assert delivered == sorted(str(event_id) for event_id in OutboxEvent.objects.values_list("event_id", flat=True))
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    print(f"max order latency with the broker down: {max(durations):.3f}s (bound {bound}s)")
