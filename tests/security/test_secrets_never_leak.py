"""No API token, Authorization header, webhook secret or password lands where people read.

One test sends what carries secrets (a wrong token, a right token with bad requests, wrong and right
metrics credentials, an admin login attempt; a wrong password on the token API, a token issued for
the right one, then used, revoked and sent again, an expired token) and makes a seller's webhook,
whose URL carries a user, password and token and whose signing secret is set, refuse a
notification, which is dead-lettered and recorded. Then it reads every place a secret could land:
every logger (caplog, root level), the response bodies (but the one that issues a token, its only
way out), the alert emails, the FailedEvent, DeliveryAttempt, Notification and ApiToken rows, a
/metrics scrape and the log files of the worker processes.
"""

from __future__ import annotations

import base64
import logging
import secrets
from pathlib import Path

import pytest
from django.core import mail
from django.db import models
from django.utils import timezone
from rest_framework.test import APIClient

from api_tokens.models import ApiToken
from api_tokens.services import api_token_issue
from marketplace.events.models import DeliveryAttempt, FailedEvent, OutboxEvent
from notifications.models import Notification
from tests.factories import BuyerFactory, ProductFactory, SellerFactory, token_for
from tests.support.orders import ORDERS_URL, place
from tests.support.waiting import eventually
from tests.support.workers import record_dead_letters

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(12)}"


def row_text(row: models.Model) -> str:
    """Every field of ``row`` as text (binary bodies decoded, JSON as stored)."""
    values = []
    for field in row._meta.concrete_fields:
        value = getattr(row, field.attname)
        if isinstance(value, memoryview | bytes):
            value = bytes(value).decode("utf-8", errors="replace")
        values.append(f"{field.name}={value}")
    return "\n".join(values)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_no_secret_reaches_logs_responses_failures_history_or_metrics(
    workers, seller_webhook, client, settings, caplog
):
    caplog.set_level(logging.DEBUG)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    wrong_token, url_password, url_token = secret("wrongtoken"), secret("urlpassword"), secret("urltoken")
    webhook_secret, metrics_password, wrong_metrics_password = secret("whsecret"), secret("metrics"), secret("nope")
    admin_password = secret("adminpassword")
    port = seller_webhook.url.split("//", 1)[1].split("/", 1)[0]
    seller = SellerFactory(
        webhook_url=f"http://hookuser:{url_password}@{port}/orders?token={url_token}", webhook_secret=webhook_secret
    )
    product = ProductFactory(seller=seller, stock=100)
    buyer_token = token_for(BuyerFactory())
    token_holder, buyer_password, wrong_buyer_password = BuyerFactory(), secret("buyerpw"), secret("wrongpw")
    token_holder.set_password(buyer_password)
    token_holder.save()
    expired = api_token_issue(user=token_holder, name="expired")
    ApiToken.objects.filter(pk=expired.api_token.pk).update(expiry=timezone.now())
    secret_values = {
        "a wrong API token": wrong_token,
        "a buyer's API token": buyer_token,
        "the password in a webhook URL": url_password,
        "the token in a webhook URL's query": url_token,
        "a webhook signing secret": webhook_secret,
        "the metrics password": metrics_password,
        "a wrong metrics password": wrong_metrics_password,
        "a password tried on the admin login": admin_password,
        "a buyer's password (token API)": buyer_password,
        "a wrong password (token API)": wrong_buyer_password,
        "an expired API token": expired.token,
    }
    seller_webhook.default_status = 422  # the seller refuses: dead-lettered at once, no retries
    settings.METRICS_BASIC_AUTH = f"prometheus:{metrics_password}"
    responses = []

    # The API: a wrong token, and the right one on requests that fail.
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION=f"Token {wrong_token}")
    responses.append(place(stranger, (product, 1)))
    responses.append(stranger.get(ORDERS_URL))
    buyer = APIClient()
    buyer.credentials(HTTP_AUTHORIZATION=f"Token {buyer_token}")
    responses.append(buyer.post(ORDERS_URL, {"lines": "not a list"}, format="json"))
    responses.append(buyer.get(f"{ORDERS_URL}999999999/"))
    responses.append(buyer.post(ORDERS_URL, data=b"{not json", content_type="application/json"))
    # /metrics with wrong credentials; the admin login with a wrong password.
    responses.append(client.get("/metrics", HTTP_AUTHORIZATION=basic("prometheus", wrong_metrics_password)))
    responses.append(client.post("/admin/login/", {"username": "admin", "password": admin_password}))
    assert [response.status_code for response in responses] == [401, 401, 400, 404, 400, 401, 200]

    # The token API: a wrong password; a right one issues a token (its response, the one place it
    # may be, is left out of the places read below), used on a bad request, revoked, sent again.
    responses.append(
        APIClient().post("/api/tokens/", HTTP_AUTHORIZATION=basic(token_holder.username, wrong_buyer_password))
    )
    issuing = APIClient().post(
        "/api/tokens/",
        {"name": "leak test"},
        format="json",
        HTTP_AUTHORIZATION=basic(token_holder.username, buyer_password),
    )
    assert issuing.status_code == 201, issuing.content
    secret_values["an API token issued by the API"] = issued_token = issuing.json()["token"]
    holder = APIClient()
    holder.credentials(HTTP_AUTHORIZATION=f"Token {issued_token}")
    responses.append(holder.post(ORDERS_URL, {"lines": "not a list"}, format="json"))
    responses.append(holder.delete("/api/tokens/current/"))
    responses.append(holder.get(ORDERS_URL))
    expired_holder = APIClient()
    expired_holder.credentials(HTTP_AUTHORIZATION=f"Token {expired.token}")
    responses.append(expired_holder.get(ORDERS_URL))
    assert [response.status_code for response in responses[-5:]] == [401, 400, 204, 401, 401]

    # The seller's webhook refuses the order's notification: dead-lettered, then recorded.
    placed = place(buyer, (product, 1))
    assert placed.status_code == 201, placed.content
    responses.append(placed)
    envelope = OutboxEvent.objects.get(envelope__data__order_id=placed.json()["id"]).envelope
    [failed] = eventually(
        lambda: record_dead_letters(subscriber="seller_notification", event_id=envelope["id"]),
        timeout=60,
        message="the refused notification recorded as a FailedEvent",
    )
    attempts = eventually(
        lambda: list(DeliveryAttempt.objects.filter(subscriber="seller_notification", event_id=envelope["id"])),
        message="the dead-lettered attempt in the delivery history",
    )
    # The failure still says where the notification went, with the credentials masked.
    assert f"webhook http://***@{port}/orders?token=*** " in failed.exception_message
    scrape = client.get("/metrics", HTTP_AUTHORIZATION=basic("prometheus", metrics_password))
    assert scrape.status_code == 200
    worker_logs = {
        path.name: path.read_text(errors="replace")
        for worker in workers.values()
        for path in Path(worker.log_path).parent.glob("*.log")
    }
    assert any(envelope["id"] in text for text in worker_logs.values())  # the failure was logged: we read it

    places = {
        "logs (every logger)": caplog.text + "\n".join(record.getMessage() for record in caplog.records),
        "response bodies": "\n".join(response.content.decode(errors="replace") for response in responses),
        "alert emails": "\n".join(f"{m.subject}\n{m.body}\n{m.extra_headers}" for m in mail.outbox),
        "FailedEvent rows": "\n".join(row_text(row) for row in FailedEvent.objects.all()),
        "DeliveryAttempt rows": "\n".join(row_text(row) for row in [*attempts, *DeliveryAttempt.objects.all()]),
        "Notification rows": "\n".join(row_text(row) for row in Notification.objects.all()),
        "ApiToken rows": "\n".join(row_text(row) for row in ApiToken.objects.all()),
        "the /metrics scrape": scrape.content.decode(),
        **{f"worker log {name}": text for name, text in worker_logs.items()},
    }
    leaks = [
        f"{what} in {where}" for where, text in places.items() for what, value in secret_values.items() if value in text
    ]
    assert leaks == []
