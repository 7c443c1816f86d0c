"""Every seller of an order is notified independently: one seller's failure stops no one else."""

import socket

import httpx
import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from marketplace.events.errors import TRANSIENT_ERRORS
from marketplace.events.models import FailedEvent, ProcessedEvent
from marketplace.mail import EmailNotSent
from notifications import handlers as notifications
from notifications.models import Notification
from orders.events import order_placed_envelope
from orders.services import LineRequest, order_place
from tests.factories import BuyerFactory, ProductFactory, SellerFactory
from tests.support.waiting import eventually
from tests.support.webhooks import SellerWebhook
from tests.support.workers import record_dead_letters


def closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def other_webhook():
    webhook = SellerWebhook()
    yield webhook
    webhook.close()


@pytest.fixture
def locmem_email(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def envelope_for(*sellers):
    """The order.placed envelope of one order with a product of each seller (not published)."""
    products = [ProductFactory(seller=seller) for seller in sellers]
    placed = order_place(
        buyer=BuyerFactory(), lines=[LineRequest(product.pk, 1) for product in products], correlation_id="t"
    )
    return order_placed_envelope(order=placed.order, correlation_id="t")


def seller_processed(envelope) -> bool:
    return ProcessedEvent.objects.filter(subscriber="seller_notification", event_id=envelope["id"]).exists()


def notified_sellers(envelope) -> set[int]:
    notifications = Notification.objects.filter(event_id=envelope["id"], kind=Notification.Kind.SELLER_ORDER)
    return set(notifications.values_list("seller_id", flat=True))


def test_a_seller_whose_webhook_refuses_does_not_stop_the_next_seller(db, seller_webhook, other_webhook):
    refusing = SellerFactory(webhook_url=seller_webhook.url)
    accepting = SellerFactory(webhook_url=other_webhook.url)
    assert refusing.pk < accepting.pk  # sellers are notified in id order: the refusing one first
    seller_webhook.default_status = 410
    envelope = envelope_for(refusing, accepting)

    with pytest.raises(notifications.SellerWebhookRejected) as raised:
        notifications.notify_sellers(envelope=envelope)

    assert f"seller {refusing.pk} ({refusing.name}) webhook {seller_webhook.url}" in str(raised.value)
    assert "410" in str(raised.value)
    assert not isinstance(raised.value, TRANSIENT_ERRORS)
    assert len(other_webhook.accepted()) == 1
    assert notified_sellers(envelope) == {accepting.pk}
    assert not seller_processed(envelope)


def test_a_refused_connection_names_the_seller_and_the_url(db):
    url = f"http://127.0.0.1:{closed_port()}/orders"
    seller = SellerFactory(webhook_url=url)
    envelope = envelope_for(seller)

    with pytest.raises(notifications.SellerWebhookUnreachable) as raised:
        notifications.notify_sellers(envelope=envelope)

    message = str(raised.value)
    assert f"seller {seller.pk} ({seller.name}) webhook {url}" in message
    assert "ConnectError" in message
    assert "Connection refused" in message
    assert isinstance(raised.value, TRANSIENT_ERRORS)
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert notified_sellers(envelope) == set()


def test_a_refused_mail_server_is_named_with_the_seller(db, settings):
    port = closed_port()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    seller = SellerFactory()
    envelope = envelope_for(seller)

    with pytest.raises(EmailNotSent) as raised:
        notifications.notify_sellers(envelope=envelope)

    message = str(raised.value)
    assert f"seller {seller.pk} ({seller.name}) email {seller.email} via mail server 127.0.0.1:{port}" in message
    assert "ConnectionRefusedError" in message
    assert isinstance(raised.value, TRANSIENT_ERRORS)
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


def test_a_refused_mail_server_is_named_for_the_buyer_confirmation(db, settings):
    port = closed_port()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    envelope = envelope_for(SellerFactory())

    with pytest.raises(EmailNotSent) as raised:
        notifications.send_order_confirmation(envelope=envelope)

    assert f"order #{envelope['data']['order_id']}" in str(raised.value)
    assert f"mail server 127.0.0.1:{port}" in str(raised.value)
    assert isinstance(raised.value, TRANSIENT_ERRORS)
    assert not ProcessedEvent.objects.filter(event_id=envelope["id"]).exists()


def test_a_retry_after_the_seller_is_fixed_notifies_only_that_seller(db, locmem_email, seller_webhook):
    broken = SellerFactory(webhook_url=seller_webhook.url)
    emailed = SellerFactory()
    seller_webhook.default_status = 404
    envelope = envelope_for(broken, emailed)
    with pytest.raises(notifications.SellerWebhookRejected):
        notifications.notify_sellers(envelope=envelope)
    assert [message.to for message in mail.outbox] == [[emailed.email]]

    seller_webhook.default_status = 200
    assert notifications.notify_sellers(envelope=envelope) == 1

    assert [request["status"] for request in seller_webhook.requests] == [404, 200]
    assert seller_webhook.accepted()[0]["headers"]["Idempotency-Key"] == f"{envelope['id']}:{broken.pk}"
    assert [message.to for message in mail.outbox] == [[emailed.email]]  # not emailed again
    assert notified_sellers(envelope) == {broken.pk, emailed.pk}
    assert seller_processed(envelope)
    assert notifications.notify_sellers(envelope=envelope) == 0


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((410, 503), notifications.SellersNotNotifiedTransient),
        ((503, 410), notifications.SellersNotNotifiedTransient),
        ((410, 400), notifications.SellersNotNotified),
    ],
)
def test_several_failures_are_one_exception_transient_if_any_failure_is(
    db, seller_webhook, other_webhook, statuses, expected
):
    first = SellerFactory(webhook_url=seller_webhook.url)
    second = SellerFactory(webhook_url=other_webhook.url)
    seller_webhook.default_status, other_webhook.default_status = statuses
    envelope = envelope_for(first, second)

    with pytest.raises(notifications.SellersNotNotified) as raised:
        notifications.notify_sellers(envelope=envelope)

    assert type(raised.value) is expected
    assert isinstance(raised.value, TRANSIENT_ERRORS) == (503 in statuses)
    message = str(raised.value)
    assert f"2 of 2 sellers of order #{envelope['data']['order_id']} not notified" in message
    for seller, webhook, status in [(first, seller_webhook, statuses[0]), (second, other_webhook, statuses[1])]:
        assert f"seller {seller.pk} ({seller.name}) webhook {webhook.url} answered {status}" in message
    # The cause is the failure that decides: the transient one if there is one.
    assert f"answered {503 if 503 in statuses else statuses[0]}" in str(raised.value.__cause__)
    assert notified_sellers(envelope) == set()
    assert not seller_processed(envelope)


def test_a_failure_the_code_did_not_expect_still_names_the_seller_among_several(db, seller_webhook, other_webhook):
    first = SellerFactory(webhook_url=seller_webhook.url)
    # A stray tab (pasted with the URL): httpx refuses the URL before any request is made.
    second = SellerFactory(webhook_url="http://shop.example\t/orders")
    seller_webhook.default_status = 503
    envelope = envelope_for(first, second)

    with pytest.raises(notifications.SellersNotNotifiedTransient) as raised:
        notifications.notify_sellers(envelope=envelope)

    message = str(raised.value)
    assert f"InvalidURL for seller {second.pk} ({second.name}) webhook http://shop.example\t/orders" in message
    assert f"seller {first.pk} ({first.name}) webhook {seller_webhook.url} answered 503" in message


@pytest.mark.parametrize("failing", ["first", "last"])
def test_the_event_is_processed_only_once_every_seller_is_notified(
    db, seller_webhook, other_webhook, locmem_email, failing
):
    first = SellerFactory(webhook_url=seller_webhook.url)
    last = SellerFactory(webhook_url=other_webhook.url)
    broken = seller_webhook if failing == "first" else other_webhook
    broken.default_status = 503
    envelope = envelope_for(first, last)

    with pytest.raises(notifications.TransientDownstreamError):
        notifications.notify_sellers(envelope=envelope)
    assert notified_sellers(envelope) == {last.pk if failing == "first" else first.pk}
    assert not seller_processed(envelope)

    broken.default_status = 200
    assert notifications.notify_sellers(envelope=envelope) == 1
    assert notified_sellers(envelope) == {first.pk, last.pk}
    assert seller_processed(envelope)


def test_the_processed_marker_costs_no_transaction_of_its_own(db, locmem_email):
    envelope = envelope_for(SellerFactory(), SellerFactory(), SellerFactory())

    with CaptureQueriesContext(connection) as queries:
        assert notifications.notify_sellers(envelope=envelope) == 3

    # Inside the test's transaction every atomic block is a savepoint: one per seller, no more.
    savepoints = [query["sql"] for query in queries if query["sql"].startswith("SAVEPOINT")]
    assert len(savepoints) == 3
    assert seller_processed(envelope)


def test_each_seller_costs_a_lock_and_one_insert_and_every_lock_is_transaction_scoped(db, locmem_email):
    envelope = envelope_for(SellerFactory(), SellerFactory(), SellerFactory())

    with CaptureQueriesContext(connection) as queries:
        assert notifications.notify_sellers(envelope=envelope) == 3

    locks = [query["sql"] for query in queries if "pg_advisory" in query["sql"]]
    # Session locks would not survive pgbouncer's transaction pooling (docs/architecture.md).
    assert len(locks) == 3
    assert all("pg_advisory_xact_lock" in sql for sql in locks)
    # The superseded check rides on the notification's INSERT: no SELECT of Notification of its own.
    assert not any(
        query["sql"].startswith("SELECT") and "notifications_notification" in query["sql"] for query in queries
    )
    assert sum(1 for query in queries if query["sql"].startswith("INSERT INTO")) == 4  # three notifications, one marker


@pytest.mark.workers
def test_a_refusing_seller_is_dead_lettered_by_name_while_the_other_is_notified(
    workers, place_order, seller_webhook, other_webhook
):
    refusing = SellerFactory(webhook_url=seller_webhook.url)
    accepting = SellerFactory(webhook_url=other_webhook.url)
    seller_webhook.default_status = 422
    refused, accepted = ProductFactory(seller=refusing), ProductFactory(seller=accepting)
    _, envelope = place_order(BuyerFactory(), (refused, 1), (accepted, 1))

    [failed] = eventually(
        lambda: record_dead_letters(subscriber="seller_notification", event_id=envelope["id"]),
        timeout=30,
        message="a FailedEvent for seller_notification",
    )
    assert failed.status == FailedEvent.Status.FAILED
    assert failed.exception_class == "notifications.handlers.SellerWebhookRejected"
    assert f"seller {refusing.pk} ({refusing.name}) webhook {seller_webhook.url} answered 422" in (
        failed.exception_message
    )
    assert failed.attempts == 1  # a refusal is not retried
    assert len(other_webhook.accepted()) == 1
    assert notified_sellers(envelope) == {accepting.pk}
    assert not seller_processed(envelope)
