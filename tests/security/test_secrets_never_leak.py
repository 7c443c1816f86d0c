"""No API token, Authorization header, webhook secret or password lands where people read.

One test sends what carries secrets (a wrong token, a right token with bad requests, wrong and right
metrics credentials, an admin login attempt) and makes a seller's webhook, whose URL carries a user,
password and token and whose signing secret is set, refuse a notification, which is dead-lettered
and recorded. Then it reads every place a secret could land: every logger (caplog, root level),
the response bodies, the alert emails, the FailedEvent, DeliveryAttempt and Notification rows,
a /metrics scrape and the log files of the worker processes.
"""

from __future__ import annotations

import base64
import logging
import secrets
from pathlib import Path

import pytest
from django.core import mail
from django.db import models
from rest_framework.test import APIClient

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
    wrong_token, url_password, url_token = secret("wrongtoken"), secret("urlpassword"), secret("urltoken")
    webhook_secret, metrics_password, wrong_metrics_password = secret("whsecret"), secret("metrics"), secret("nope")
    admin_password = secret("adminpassword")
    port = seller_webhook.url.split("//", 1)[1].split("/", 1)[0]
    seller = SellerFactory(
        webhook_url=f"http://hookuser:{url_password}@{port}/orders?token={url_token}", webhook_secret=webhook_secret
    )
    product = ProductFactory(seller=seller, stock=100)
    buyer_token = token_for(BuyerFactory())
    secret_values = {
        "a wrong API token": wrong_token,
        "a buyer's API token": buyer_token,
        "the password in a webhook URL": url_password,
        "the token in a webhook URL's query": url_token,
        "a webhook signing secret": webhook_secret,
        "the metrics password": metrics_password,
        "a wrong metrics password": wrong_metrics_password,
        "a password tried on the admin login": admin_password,
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
        "the /metrics scrape": scrape.content.decode(),
        **{f"worker log {name}": text for name, text in worker_logs.items()},
    }
    leaks = [
        f"{what} in {where}" for where, text in places.items() for what, value in secret_values.items() if value in text
    ]
    assert leaks == []
