"""/metrics on the web app: authentication, what it exposes, and that it counts what happens."""

import uuid

import pytest
from django.utils import timezone
from kombu import Connection, Producer

from marketplace import metrics
from marketplace.events import outbox, topology
from marketplace.events.models import FailedEvent
from tests.factories import BuyerFactory, ProductFactory
from tests.observability.conftest import CREDENTIALS, Scrape, basic_auth

# Every metric docs/observability.md promises, as a query names it.
EXPOSED = {
    "marketplace_orders_placed_total",
    "marketplace_outbox_pending_events",
    "marketplace_outbox_lag_seconds",
    "marketplace_outbox_publish_latency_seconds_bucket",
    "marketplace_subscriber_events_processed_total",
    "marketplace_subscriber_events_retried_total",
    "marketplace_subscriber_events_dead_lettered_total",
    "marketplace_subscriber_handler_duration_seconds_bucket",
    "marketplace_subscriber_queue_messages",
    "marketplace_subscriber_queue_consumers",
    "marketplace_dead_letter_queue_messages",
    "marketplace_failed_events_open",
    "marketplace_failed_events_open_by_exception",
    "marketplace_metrics_source_up",
}


def test_metrics_are_off_without_credentials_configured(client, settings):
    settings.METRICS_BASIC_AUTH = ""

    response = client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(CREDENTIALS))

    assert response.status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic_auth("prometheus:wrong"),
        basic_auth("someone:scrape-s3cret"),
        "Bearer " + CREDENTIALS,
        "Basic not-base64!",
    ],
)
def test_metrics_require_the_configured_basic_auth(client, metrics_credentials, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}

    response = client.get("/metrics", **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic ")
    assert b"marketplace_" not in response.content


@pytest.mark.broker
def test_metrics_expose_every_metric_in_prometheus_format(db, client, metrics_credentials):
    response = client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(metrics_credentials))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    scraped = Scrape(response.content.decode())
    assert scraped.names() >= EXPOSED, EXPOSED - scraped.names()
    for subscriber in topology.SUBSCRIBERS:
        for name in (
            "marketplace_subscriber_events_processed_total",
            "marketplace_subscriber_events_dead_lettered_total",
            "marketplace_failed_events_open",
            "marketplace_dead_letter_queue_messages",
        ):
            assert scraped.samples(name, subscriber=subscriber.name), (name, subscriber.name)
    assert scraped.value("marketplace_metrics_source_up", source="database") == 1
    assert scraped.value("marketplace_metrics_source_up", source="broker") == 1


def test_an_order_placed_through_the_api_is_counted(db, scrape, client_for):
    buyer = BuyerFactory()
    product = ProductFactory(stock=5)
    before = scrape().value("marketplace_orders_placed_total")

    response = client_for(buyer).post(
        "/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json"
    )
    assert response.status_code == 201, response.content
    # An idempotent replay of the same request places nothing.
    key = {"HTTP_IDEMPOTENCY_KEY": str(uuid.uuid4())}
    for _ in range(2):
        response = client_for(buyer).post(
            "/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json", **key
        )
        assert response.status_code in (200, 201), response.content
    # A rejected order is not counted either.
    response = client_for(buyer).post(
        "/api/orders/", {"lines": [{"product": product.pk, "quantity": 99}]}, format="json"
    )
    assert response.status_code == 409

    assert scrape().value("marketplace_orders_placed_total") == before + 2


@pytest.mark.broker
def test_the_publish_latency_of_each_committed_event_is_observed(transactional_db, scrape, client_for):
    buyer = BuyerFactory()
    product = ProductFactory(stock=5)
    before = scrape()

    for _ in range(2):
        response = client_for(buyer).post(
            "/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json"
        )
        assert response.status_code == 201, response.content
    assert outbox.on_commit_publisher.flush()

    after = scrape()
    count = "marketplace_outbox_publish_latency_seconds_count"
    assert after.value(count) == before.value(count) + 2
    # Committed and confirmed well within a few seconds on an idle local broker.
    assert (
        after.value("marketplace_outbox_publish_latency_seconds_bucket", le="5.0")
        == before.value("marketplace_outbox_publish_latency_seconds_bucket", le="5.0") + 2
    )
    assert after.value("marketplace_outbox_pending_events") == 0
    assert after.value("marketplace_outbox_lag_seconds") == 0


def test_open_failures_are_counted_per_subscriber_and_exception_class(db, scrape):
    def failure(subscriber, exception_class, status=FailedEvent.Status.FAILED):
        FailedEvent.objects.create(
            subscriber=subscriber,
            event_id=uuid.uuid4(),
            exception_class=exception_class,
            status=status,
            last_failed_at=timezone.now(),
        )

    failure("order_confirmation", "smtplib.SMTPServerDisconnected")
    failure("order_confirmation", "smtplib.SMTPServerDisconnected", FailedEvent.Status.REPLAYING)
    failure("order_confirmation", "marketplace.events.envelope.InvalidEnvelope")
    failure("order_confirmation", "smtplib.SMTPServerDisconnected", FailedEvent.Status.RESOLVED)
    failure("seller_notification", "httpx.ConnectError", FailedEvent.Status.ARCHIVED)
    failure("customer_segmentation", "KeyError")

    scraped = scrape()

    open_failures = "marketplace_failed_events_open"
    assert scraped.value(open_failures, subscriber="order_confirmation") == 3
    assert scraped.value(open_failures, subscriber="customer_segmentation") == 1
    # Subscribers without open failures have their series, at 0.
    assert scraped.samples(open_failures, subscriber="seller_notification")
    assert scraped.value(open_failures, subscriber="seller_notification") == 0
    by_exception = {
        (sample.labels["subscriber"], sample.labels["exception_class"]): sample.value
        for sample in scraped.samples("marketplace_failed_events_open_by_exception")
    }
    assert by_exception == {
        ("order_confirmation", "smtplib.SMTPServerDisconnected"): 2,
        ("order_confirmation", "marketplace.events.envelope.InvalidEnvelope"): 1,
        ("customer_segmentation", "KeyError"): 1,
    }


@pytest.mark.broker
def test_dead_letter_queue_depth_is_read_from_rabbitmq(db, scrape, broker_url, purge_queues):
    subscriber = topology.subscriber_named("customer_segmentation")
    with Connection(broker_url) as connection:
        producer = Producer(connection.default_channel)
        for _ in range(3):
            producer.publish(b"{}", routing_key=subscriber.dead_letter_queue_name)

    scraped = scrape()

    dead = "marketplace_dead_letter_queue_messages"
    assert scraped.value(dead, subscriber="customer_segmentation") == 3
    assert scraped.value(dead, subscriber="order_confirmation") == 0
    with Connection(broker_url) as connection:
        connection.default_channel.queue_purge(subscriber.dead_letter_queue_name)


def test_an_unreachable_broker_leaves_its_gauges_out_and_says_so(db, scrape, settings):
    settings.BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens on port 1

    scraped = scrape()

    assert scraped.value("marketplace_metrics_source_up", source="broker") == 0
    assert not scraped.samples("marketplace_dead_letter_queue_messages")
    # The rest is still there.
    assert scraped.value("marketplace_metrics_source_up", source="database") == 1
    assert scraped.samples("marketplace_orders_placed_total")


def test_counting_never_raises(monkeypatch):
    metrics.observe_publish_latency({"no": "occurred_at"})

    def broken():
        raise OSError("No space left on device")

    monkeypatch.setattr(metrics, "instruments", broken)
    metrics.count_order_placed()
    metrics.count_processed("order_confirmation")
    with pytest.raises(ZeroDivisionError), metrics.timed_handler("order_confirmation"):
        1 / 0  # noqa: B018 - the handler's own exception propagates
