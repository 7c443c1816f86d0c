"""A broker of several nodes: BROKER_URL lists them (";"), and losing one loses nothing.

The first tests are quick: a failover URL whose first hosts are dead (refused, or silent), in
front of the shared broker. The last one is slow: a real three-node cluster
(bin/rabbitmq-cluster), the topology declared on it, two worker processes per subscriber and the
outbox relay, all with the failover BROKER_URL. Orders keep coming through the API while the node
that leads the subscriber queues (and holds every client connection: it is first in BROKER_URL)
is shut down, and a few email sends fail at that moment, so their retries wait in the retry
queues across the failover. Effects are counted at the edge: the emails the email backend
accepted, and each buyer's order count in the database.

It takes two or three minutes and is not part of the default run (marked slow). Run it with

    .venv/bin/pytest tests/faults/test_cluster.py -m cluster
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from marketplace.events import topology
from marketplace.events.broker import BrokerPublisher, connect_once
from marketplace.events.models import OutboxEvent
from notifications.models import Notification
from segmentation.models import CustomerProfile
from tests.events.conftest import order_placed_sample
from tests.factories import BuyerFactory, ProductFactory, SellerFactory
from tests.faults.conftest import consumer_counts, node_name, node_number
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker]

ORDERS_BEFORE_STOP = 15
# Email sends that fail (transiently) as the node goes down: their retries cross the failover.
FAILED_SENDS = 4
ORDERS_AFTER_STOP = 20
ORDER_PAUSE = 0.1
# A request waits on the broker at most a few EVENTS_PUBLISH_TIMEOUTs (1 s), failover included;
# the rest is slack for a busy machine.
SLOWEST_ORDER_SECONDS = 8.0


def refused_url() -> str:
    """A host that refuses connections: a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}//"


@pytest.fixture
def silent_url():
    """A host that accepts the TCP connection and then never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"amqp://guest:guest@127.0.0.1:{server.getsockname()[1]}//"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_each_host_is_tried_once_in_order_each_within_the_timeout(broker_url, silent_url):
    connection = Connection(f"{refused_url()};{silent_url};{broker_url}", connect_timeout=1)
    started = time.monotonic()
    connect_once(connection)
    elapsed = time.monotonic() - started
    assert connection.as_uri(include_password=True) == broker_url
    assert 0.9 < elapsed < 3, elapsed  # the refusal costs nothing, the silent host one timeout
    connection.release()

    dead = Connection(f"{refused_url()};{silent_url}", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(OperationalError):
        connect_once(dead)
    assert time.monotonic() - started < 3  # one round, no sleeping between rounds


def test_the_publisher_fails_over_to_the_next_host(broker_url, event_tap):
    publisher = BrokerPublisher(url=f"{refused_url()};{broker_url}")
    envelope = order_placed_sample()
    publisher.publish(envelope)
    publisher.close()
    assert [message.payload["id"] for message in event_tap.drain(expected=1)] == [envelope["id"]]


def test_healthz_sees_the_broker_through_a_failover_url(db, client, settings, broker_url):
    settings.BROKER_URL = f"{refused_url()};{broker_url}"
    assert client.get("/healthz").json()["broker"] == "ok"
    settings.BROKER_URL = refused_url()
    assert client.get("/healthz").json()["broker"].startswith("error")


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.timeout(600)
def test_stopping_the_queue_leader_loses_and_duplicates_nothing(
    rabbit_cluster, cluster_broker_url, cluster_system, faults, client_for
):
    buyers = BuyerFactory.create_batch(4)
    sellers = SellerFactory.create_batch(2)
    products = [ProductFactory(seller=seller, stock=10_000, price=Decimal("10.00")) for seller in sellers]
    vhost = cluster_broker_url.rsplit("/", 1)[1]

    leaders = rabbit_cluster.leaders(vhost)
    leader = Counter(leaders[s.queue_name] for s in topology.SUBSCRIBERS).most_common(1)[0][0]
    leader_node = node_number(leader)

    placed: list[tuple[int, object, object]] = []  # (order id, buyer, seller)
    durations: list[float] = []

    def place_order(index: int) -> None:
        buyer, product = buyers[index % len(buyers)], products[index % len(products)]
        started = time.monotonic()
        response = client_for(buyer).post(
            "/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json"
        )
        durations.append(time.monotonic() - started)
        assert response.status_code == 201, response.content
        placed.append((response.json()["id"], buyer, product.seller))

    with ThreadPoolExecutor(1) as pool:
        stopping = None
        stopped_at = 0.0
        after_stop = 0
        for index in range(500):
            place_order(index)
            if index + 1 == ORDERS_BEFORE_STOP:
                faults.fail_email(FAILED_SENDS)
                stopping = pool.submit(rabbit_cluster.stop_node, leader_node)
            if stopping is not None and stopping.done():
                stopping.result()
                stopped_at = stopped_at or time.time()
                after_stop += 1
                if after_stop >= ORDERS_AFTER_STOP:
                    break
            time.sleep(ORDER_PAUSE)
    assert after_stop >= ORDERS_AFTER_STOP, "the node did not stop"
    assert max(durations) < SLOWEST_ORDER_SECONDS, sorted(durations)[-5:]

    # The queues got new leaders on the surviving nodes, and every worker consumes again.
    new_leaders = rabbit_cluster.leaders(vhost)
    assert all(new_leaders[s.queue_name] != node_name(leader_node) for s in topology.SUBSCRIBERS), new_leaders
    eventually(
        lambda: all(count == 2 for count in consumer_counts(cluster_broker_url).values()),
        timeout=60,
        message="both workers of every subscriber to consume again",
    )

    # Every event reaches the broker (the relay publishes what a request could not) ...
    eventually(
        lambda: not OutboxEvent.objects.filter(published_at__isnull=True).exists(),
        timeout=120,
        interval=0.5,
        message="the outbox to drain",
    )
    # ... and every effect happens: one email to the buyer and one to the seller per order, and
    # the buyer's order count.
    orders = len(placed)
    eventually(
        lambda: (
            len(faults.emails()) >= 2 * orders
            and sum(CustomerProfile.objects.values_list("order_count", flat=True)) >= orders
        ),
        timeout=180,
        interval=0.5,
        message=f"the effects of {orders} orders",
    )
    time.sleep(5)  # a late duplicate would show up now

    event_of = {
        row["envelope__data__order_id"]: row["envelope__id"]
        for row in OutboxEvent.objects.values("envelope__data__order_id", "envelope__id")
    }
    expected = set()
    for order_id, buyer, seller in placed:
        expected |= {(event_of[order_id], buyer.email), (event_of[order_id], seller.email)}
    sent = Counter((mail["event_id"], recipient) for mail in faults.emails() for recipient in mail["to"])
    lost = expected - set(sent)
    duplicated = {key: count for key, count in sent.items() if count > 1}
    unexpected = set(sent) - expected
    assert (lost, duplicated, unexpected) == (set(), {}, set()), (
        f"{len(lost)} lost, {len(duplicated)} duplicated, {len(unexpected)} unexpected emails of {orders} orders"
    )

    retried_at = [start["at"] for start in faults.task_starts() if start["retries"]]
    assert retried_at, "no task was retried: the failed sends did not happen"
    assert max(retried_at) > stopped_at, "every retry ran before the node was gone: none crossed the failover"

    orders_per_buyer = Counter(buyer.pk for _, buyer, _ in placed)
    counted = dict(CustomerProfile.objects.values_list("buyer_id", "order_count"))
    assert counted == dict(orders_per_buyer)
    assert Notification.objects.count() == 2 * orders

    workers = cluster_system["workers"]
    assert all(worker.process.poll() is None for worker in workers), [
        str(worker.log_path) for worker in workers if worker.process.poll() is not None
    ]
