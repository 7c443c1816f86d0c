"""Seller webhooks as Standard Webhooks (verified with its reference library), secret rotation, and no
request forgery: a webhook never reaches an internal address, whether its URL is saved or its DNS
changes later."""

import base64
import secrets
import socket
import time

import pytest
from django.core.exceptions import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from marketplace.events.errors import TRANSIENT_ERRORS
from marketplace.events.models import FailedEvent
from notifications import handlers as notifications
from notifications import webhooks
from notifications.models import Notification
from orders.events import order_placed_envelope
from orders.models import Seller
from orders.services import LineRequest, order_place
from tests.factories import BuyerFactory, ProductFactory, SellerFactory
from tests.support.waiting import eventually
from tests.support.workers import record_dead_letters


def envelope_for(*sellers):
    """The order.placed envelope of one order with a product of each seller (not published)."""
    products = [ProductFactory(seller=seller) for seller in sellers]
    placed = order_place(
        buyer=BuyerFactory(), lines=[LineRequest(product.pk, 1) for product in products], correlation_id="t"
    )
    return order_placed_envelope(order=placed.order, correlation_id="t")


def new_spec_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture
def dns(monkeypatch):
    """``dns["shop.example"] = ["10.0.0.5"]``: what socket.getaddrinfo answers for that name (an empty
    list: no such name; other names resolve as usual). ``dns.asked`` lists every name looked up."""

    real = socket.getaddrinfo

    class FakeDns(dict):
        def __init__(self):
            super().__init__()
            self.asked: list[str] = []

    answers = FakeDns()

    def getaddrinfo(host, port, *args, **kwargs):
        answers.asked.append(host)
        if host not in answers:
            return real(host, port, *args, **kwargs)
        if not answers[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.fixture
def production_targets(settings):
    """Production's defaults: no host allowed to be internal, https only."""
    settings.SELLER_WEBHOOK_ALLOWED_HOSTS = []
    settings.SELLER_WEBHOOK_REQUIRE_HTTPS = True


# --- signing ---------------------------------------------------------------------------------


def test_a_delivery_verifies_with_the_reference_library_and_a_plain_secret_in_its_whsec_form(db, seller_webhook):
    seller = SellerFactory(webhook_url=seller_webhook.url, webhook_secret="s3cret")
    envelope = envelope_for(seller)

    assert notifications.notify_sellers(envelope=envelope) == 1

    [request] = seller_webhook.requests
    headers = request["headers"]
    # An existing plain secret's key is its UTF-8 bytes: whsec_ + base64 of them is what the seller configures.
    assert webhooks.spec_secret("s3cret") == "whsec_" + base64.b64encode(b"s3cret").decode()
    assert Webhook(webhooks.spec_secret("s3cret")).verify(request["raw_body"], headers) == request["body"]
    delivery_id = f"{envelope['id']}:{seller.pk}"
    assert headers["webhook-id"] == headers["Idempotency-Key"] == delivery_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    assert " " not in headers["webhook-signature"]  # one secret, one signature
    # The deprecated body-only signature still goes to the receivers that check it.
    assert headers["X-Marketplace-Signature"] == webhooks.legacy_signature(secret="s3cret", body=request["raw_body"])
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.spec_secret("another")).verify(request["raw_body"], headers)


def test_during_a_rotation_the_delivery_verifies_with_either_secret(db, seller_webhook):
    current, upcoming = new_spec_secret(), new_spec_secret()
    seller = SellerFactory(webhook_url=seller_webhook.url, webhook_secret=current, webhook_secret_next=upcoming)

    assert notifications.notify_sellers(envelope=envelope_for(seller)) == 1

    [request] = seller_webhook.requests
    headers = request["headers"]
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (current, upcoming):
        assert Webhook(secret).verify(request["raw_body"], headers) == request["body"]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_spec_secret()).verify(request["raw_body"], headers)
    assert "X-Marketplace-Signature" not in headers  # the deprecated header is for plain secrets only


def test_the_webhook_id_is_the_same_on_a_retry_and_the_timestamp_is_the_attempts(db, seller_webhook):
    seller = SellerFactory(webhook_url=seller_webhook.url, webhook_secret="s3cret")
    seller_webhook.statuses = [503]
    envelope = envelope_for(seller)
    with pytest.raises(notifications.TransientDownstreamError):
        notifications.notify_sellers(envelope=envelope)

    assert notifications.notify_sellers(envelope=envelope) == 1

    first, retry = seller_webhook.requests
    assert first["headers"]["webhook-id"] == retry["headers"]["webhook-id"] == f"{envelope['id']}:{seller.pk}"
    assert int(retry["headers"]["webhook-timestamp"]) >= int(first["headers"]["webhook-timestamp"])
    Webhook(webhooks.spec_secret("s3cret")).verify(retry["raw_body"], retry["headers"])


def test_a_replayed_delivery_older_than_five_minutes_is_rejected_by_the_reference_library():
    body = b'{"event_id":"e"}'
    stale = webhooks.signature_headers(msg_id="e:1", body=body, secrets=["s3cret"], at=time.time() - 6 * 60)
    fresh = webhooks.signature_headers(msg_id="e:1", body=body, secrets=["s3cret"])

    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(webhooks.spec_secret("s3cret")).verify(body, stale)
    Webhook(webhooks.spec_secret("s3cret")).verify(body, fresh)


def test_an_unsigned_seller_still_gets_the_id_and_timestamp(db, seller_webhook):
    seller = SellerFactory(webhook_url=seller_webhook.url)

    notifications.notify_sellers(envelope=envelope_for(seller))

    [request] = seller_webhook.requests
    assert request["headers"]["webhook-id"]
    assert request["headers"]["webhook-timestamp"]
    assert "webhook-signature" not in request["headers"]


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!"])
def test_a_malformed_whsec_secret_is_refused_on_save(db, secret):
    seller = Seller(name="Shop", email="shop@example.com", webhook_secret=secret, webhook_secret_next=secret)

    with pytest.raises(ValidationError) as raised:
        seller.full_clean()

    assert set(raised.value.message_dict) == {"webhook_secret", "webhook_secret_next"}


# --- no request forgery: when a seller is saved ----------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/orders", "resolves to 127.0.0.1, a loopback address"),
        ("https://localhost/orders", "a loopback address"),
        ("https://[::1]/orders", "resolves to ::1, a loopback address"),
        ("https://10.0.0.5/orders", "resolves to 10.0.0.5, a private address"),
        ("https://192.168.1.20:8443/orders", "resolves to 192.168.1.20, a private address"),
        ("https://[fd00::5]/orders", "resolves to fd00::5, a private address"),
        ("https://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254, a link-local address"),
        ("https://[fe80::1]/orders", "a link-local address"),
        ("https://224.0.0.251/orders", "resolves to 224.0.0.251, a multicast address"),
        ("https://240.0.0.1/orders", "resolves to 240.0.0.1, a reserved address"),
        ("https://0.0.0.0/orders", "resolves to 0.0.0.0, an unspecified address"),
        ("https://100.64.0.1/orders", "resolves to 100.64.0.1, not a global address"),
        ("https://[::ffff:10.0.0.5]/orders", "an IPv6 form of 10.0.0.5, a private address"),
        ("https://[64:ff9b::a9fe:a9fe]/orders", "an IPv6 form of 169.254.169.254, a link-local address"),
        ("https://intranet.shop.example/orders", "webhook host intranet.shop.example resolves to 10.0.0.5"),
        ("https://split.shop.example/orders", "webhook host split.shop.example resolves to 172.16.0.9"),
    ],
)
def test_a_seller_webhook_url_on_an_internal_address_is_refused_on_save(db, dns, production_targets, url, reason):
    dns["intranet.shop.example"] = ["10.0.0.5"]
    dns["split.shop.example"] = ["93.184.215.14", "172.16.0.9"]  # every address counts, not only the first
    seller = Seller(name="Shop", email="shop@example.com", webhook_url=url)

    with pytest.raises(ValidationError) as raised:
        seller.full_clean()

    [message] = raised.value.message_dict["webhook_url"]
    assert reason in message


def test_a_public_https_url_is_accepted_and_plain_http_is_refused_in_production(db, dns, production_targets):
    dns["shop.example"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    Seller(name="Shop", email="shop@example.com", webhook_url="https://shop.example/orders").full_clean()

    with pytest.raises(ValidationError, match="webhook URL must be https, not http"):
        Seller(name="Shop", email="shop@example.com", webhook_url="http://shop.example/orders").full_clean()


def test_plain_http_to_a_public_host_is_accepted_in_development(db, dns, settings):
    settings.SELLER_WEBHOOK_ALLOWED_HOSTS, settings.SELLER_WEBHOOK_REQUIRE_HTTPS = [], False
    dns["shop.example"] = ["93.184.215.14"]

    Seller(name="Shop", email="shop@example.com", webhook_url="http://shop.example/orders").full_clean()


def test_an_allowed_host_is_accepted_even_internal_and_over_http(db, production_targets, settings):
    settings.SELLER_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1", "hooks.internal"]

    Seller(name="Shop", email="shop@example.com", webhook_url="http://127.0.0.1:8080/orders").full_clean()
    Seller(name="Shop", email="shop@example.com", webhook_url="http://HOOKS.internal/orders").full_clean()


def test_a_host_that_does_not_resolve_is_refused_on_save(db, dns, production_targets):
    dns["nowhere.example"] = []

    with pytest.raises(ValidationError, match=r"webhook host nowhere\.example does not resolve"):
        Seller(name="Shop", email="shop@example.com", webhook_url="https://nowhere.example/orders").full_clean()


def test_the_admin_refuses_an_internal_webhook_url(admin_client, production_targets):
    response = admin_client.post(
        "/admin/orders/seller/add/",
        {"name": "Shop", "email": "shop@example.com", "webhook_url": "https://169.254.169.254/latest/meta-data/"},
    )

    assert response.status_code == 200  # the form again, with the error
    assert "resolves to 169.254.169.254, a link-local address" in response.content.decode()
    assert not Seller.objects.filter(name="Shop").exists()


# --- no request forgery: at delivery ---------------------------------------------------------


def test_a_host_whose_dns_turned_internal_after_the_save_is_refused_at_delivery(db, dns, production_targets):
    dns["shop.example"] = ["93.184.215.14"]
    seller = Seller.objects.create(name="Shop", email="shop@example.com", webhook_url="https://shop.example/orders")
    seller.full_clean()  # it was fine when saved
    dns["shop.example"] = ["10.0.0.5"]  # and then its DNS answers a private address
    envelope = envelope_for(seller)

    with pytest.raises(notifications.SellerWebhookRefused) as raised:
        notifications.notify_sellers(envelope=envelope)

    message = str(raised.value)
    assert f"seller {seller.pk} (Shop) webhook https://shop.example/orders refused" in message
    assert "webhook host shop.example resolves to 10.0.0.5, a private address" in message
    assert not isinstance(raised.value, TRANSIENT_ERRORS)
    assert not Notification.objects.filter(event_id=envelope["id"]).exists()


def test_a_delivery_to_a_loopback_url_not_allowed_is_refused(db, seller_webhook, production_targets, settings):
    settings.SELLER_WEBHOOK_REQUIRE_HTTPS = False  # the address alone refuses it
    seller = SellerFactory(webhook_url=seller_webhook.url)

    with pytest.raises(notifications.SellerWebhookRefused, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        notifications.notify_sellers(envelope=envelope_for(seller))

    assert seller_webhook.requests == []


def test_plain_http_is_refused_at_delivery_in_production(db, dns, production_targets):
    dns["shop.example"] = ["93.184.215.14"]
    seller = SellerFactory(webhook_url="http://shop.example/orders")

    with pytest.raises(notifications.SellerWebhookRefused, match="webhook URL must be https, not http"):
        notifications.notify_sellers(envelope=envelope_for(seller))


def test_an_allowed_host_is_delivered_to_in_production_mode(db, seller_webhook, production_targets, settings):
    settings.SELLER_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    seller = SellerFactory(webhook_url=seller_webhook.url)

    assert notifications.notify_sellers(envelope=envelope_for(seller)) == 1
    assert len(seller_webhook.accepted()) == 1


def test_the_delivery_connects_to_the_checked_address_keeping_the_host(db, dns, seller_webhook, monkeypatch):
    # Pretend loopback is public, so that a name resolving to the test's server passes the check.
    monkeypatch.setattr(webhooks, "address_refusal", lambda address: None)
    port = seller_webhook.server.server_address[1]
    dns["shop.example"] = ["127.0.0.1"]
    seller = SellerFactory(webhook_url=f"http://shop.example:{port}/orders")

    assert notifications.notify_sellers(envelope=envelope_for(seller)) == 1

    [request] = seller_webhook.requests
    assert request["headers"]["Host"] == f"shop.example:{port}"
    # Resolved once, by the check; the connection went to the checked address, with no lookup of its own.
    assert dns.asked.count("shop.example") == 1


def test_the_transport_refuses_before_connecting_when_any_address_is_internal(dns):
    import httpx

    dns["shop.example"] = ["93.184.215.14", "::ffff:127.0.0.1"]
    policy = webhooks.TargetPolicy(allowed_hosts=frozenset(), require_https=True)

    with (
        httpx.Client(transport=webhooks.SafeWebhookTransport(policy)) as client,
        pytest.raises(webhooks.UnsafeWebhookTarget, match=r"::ffff:127\.0\.0\.1, an IPv6 form of 127\.0\.0\.1"),
    ):
        client.post("https://shop.example/orders", content=b"{}")


@pytest.mark.workers
def test_a_refused_webhook_is_dead_lettered_at_once_with_its_reason(workers, place_order):
    # The workers run with development's defaults: loopback allowed, other internal addresses not.
    seller = SellerFactory(webhook_url="http://169.254.169.254/latest/meta-data/")
    _, envelope = place_order(BuyerFactory(), (ProductFactory(seller=seller), 1))

    [failed] = eventually(
        lambda: record_dead_letters(subscriber="seller_notification", event_id=envelope["id"]),
        timeout=30,
        message="a FailedEvent for seller_notification",
    )
    assert failed.status == FailedEvent.Status.FAILED
    assert failed.exception_class == "notifications.handlers.SellerWebhookRefused"
    assert "resolves to 169.254.169.254, a link-local address" in failed.exception_message
    assert failed.attempts == 1  # refused, not retried
