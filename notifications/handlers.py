"""Buyer order confirmations and seller notifications: plain functions, one call per event.

Exactly-once effect: the marker row (ProcessedEvent / Notification) is inserted, the message is
sent, and only then does the transaction commit. A failed send rolls the marker back so a retry
sends again; a duplicate delivery finds the committed marker and sends nothing. The one window
left — the provider accepted the message but our commit failed — errs towards a duplicate
rather than a lost confirmation; the event id travels as X-Marketplace-Event-Id (and as the
webhook idempotency key) so a provider or seller can drop that duplicate too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction

from marketplace.events.subscriber import TransientDownstreamError, claim_event, insert_once
from notifications.models import Notification
from orders.models import Seller

logger = logging.getLogger(__name__)

ORDER_CONFIRMATION = "order_confirmation"
SELLER_NOTIFICATION = "seller_notification"


class SellerWebhookRejected(Exception):
    """The seller's endpoint refused the notification (4xx): retrying will not help."""


class UnknownSeller(Exception):
    """The event names a seller this service does not know: bad data, not worth retrying."""


def send_order_confirmation(*, envelope: dict[str, Any]) -> bool:
    """Email the buyer their order: lines and total. Returns False if it was already sent."""
    order = envelope["data"]
    buyer = order["buyer"]
    with transaction.atomic():
        if not claim_event(subscriber=ORDER_CONFIRMATION, event_id=envelope["id"]):
            return False
        lines = "\n".join(
            f"  {line['quantity']} x {line['name']} ({line['sku']}) @ {line['unit_price']} = {line['line_total']}"
            for line in order["lines"]
        )
        EmailMessage(
            subject=f"Your order #{order['order_id']} is confirmed",
            body=(
                f"Hello {buyer['name']},\n\nThank you for your order #{order['order_id']}.\n\n{lines}\n\n"
                f"Total: {order['total']} {order['currency']}\n"
            ),
            to=[buyer["email"]],
            headers={"X-Marketplace-Event-Id": envelope["id"]},
        ).send()
        Notification.objects.create(
            event_id=envelope["id"],
            kind=Notification.Kind.ORDER_CONFIRMATION,
            channel=Notification.Channel.EMAIL,
            recipient=buyer["email"],
            order_id=order["order_id"],
        )
    logger.info("order %s: confirmation emailed to %s", order["order_id"], buyer["email"])
    return True


def notify_sellers(*, envelope: dict[str, Any]) -> int:
    """Tell each seller in the order about their own lines only. Returns how many were notified now.

    Each seller's notification commits on its own, so when one seller's webhook is down, a retry
    notifies only the sellers not yet notified.
    """
    order = envelope["data"]
    lines_by_seller: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in order["lines"]:
        lines_by_seller[line["seller_id"]].append(line)
    sellers = Seller.objects.in_bulk(list(lines_by_seller))
    missing = sorted(set(lines_by_seller) - set(sellers))
    if missing:
        raise UnknownSeller(f"event {envelope['id']} names unknown seller(s) {missing}")

    notified = 0
    by_seller = sorted(lines_by_seller.items())
    for seller_id, lines in by_seller:
        seller = sellers[seller_id]
        with transaction.atomic():
            notification = Notification(
                event_id=envelope["id"],
                kind=Notification.Kind.SELLER_ORDER,
                seller_id=seller_id,
                channel=Notification.Channel.WEBHOOK if seller.webhook_url else Notification.Channel.EMAIL,
                recipient=seller.webhook_url or seller.email,
                order_id=order["order_id"],
            )
            if insert_once(notification):
                if seller.webhook_url:
                    _post_webhook(seller, envelope, lines)
                else:
                    _email_seller(seller, envelope, lines)
                notified += 1
            if seller_id == by_seller[-1][0]:
                # The event is done once its last seller is: no transaction of its own for the marker.
                claim_event(subscriber=SELLER_NOTIFICATION, event_id=envelope["id"])
    logger.info("order %s: notified %d of %d seller(s)", order["order_id"], notified, len(lines_by_seller))
    return notified


def seller_payload(envelope: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, Any]:
    order = envelope["data"]
    return {
        "event_id": envelope["id"],
        "order_id": order["order_id"],
        "placed_at": order["placed_at"],
        "currency": order["currency"],
        "lines": lines,
        "seller_total": str(sum((Decimal(line["line_total"]) for line in lines), Decimal("0.00"))),
    }


def _post_webhook(seller: Seller, envelope: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    body = json.dumps(seller_payload(envelope, lines), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Marketplace-Event-Id": envelope["id"],
        "Idempotency-Key": f"{envelope['id']}:{seller.pk}",
    }
    if seller.webhook_secret:
        digest = hmac.new(seller.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Marketplace-Signature"] = f"sha256={digest}"
    response = httpx.post(seller.webhook_url, content=body, headers=headers, timeout=settings.SELLER_WEBHOOK_TIMEOUT)
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientDownstreamError(f"seller {seller.pk} webhook answered {response.status_code}")
    if response.status_code >= 400:
        raise SellerWebhookRejected(f"seller {seller.pk} webhook answered {response.status_code}")


def _email_seller(seller: Seller, envelope: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    order = envelope["data"]
    payload = seller_payload(envelope, lines)
    listing = "\n".join(
        f"  {line['quantity']} x {line['name']} ({line['sku']}) = {line['line_total']}" for line in lines
    )
    EmailMessage(
        subject=f"New order #{order['order_id']}",
        body=(
            f"Hello {seller.name},\n\nOrder #{order['order_id']} includes your products:\n\n{listing}\n\n"
            f"Your total: {payload['seller_total']} {order['currency']}\n"
        ),
        to=[seller.email],
        headers={"X-Marketplace-Event-Id": envelope["id"]},
    ).send()
