"""Buyer order confirmations and seller notifications: plain functions, one call per event.

Exactly-once effect: the marker row (ProcessedEvent / Notification) is inserted, the message is
sent, and only then does the transaction commit. A failed send rolls the marker back so a retry
sends again; a duplicate delivery finds the committed marker and sends nothing. The one window
left — the provider accepted the message but our commit failed — errs towards a duplicate
rather than a lost confirmation; the event id travels as X-Marketplace-Event-Id (and as the
webhook idempotency key) so a provider or seller can drop that duplicate too.

Sellers are independent of each other: each seller's notification is a transaction of its own,
so one seller's broken endpoint neither stops nor undoes the others'. A failure message names
the seller and where the notification went (webhook URL, or email address and mail server).
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
from django.core.mail.backends.smtp import EmailBackend as SMTPEmailBackend
from django.db import DatabaseError, transaction
from django.utils.module_loading import import_string

from marketplace.events.subscriber import TRANSIENT_ERRORS, TransientDownstreamError, claim_event, insert_once
from notifications.models import Notification
from orders.selectors import SellerContact, seller_contacts

logger = logging.getLogger(__name__)

ORDER_CONFIRMATION = "order_confirmation"
SELLER_NOTIFICATION = "seller_notification"
# How much of a refusing seller's answer goes into the failure message: their reason, not a page.
REJECTION_BODY_CHARS = 200


class SellerWebhookRejected(Exception):
    """The seller's endpoint refused the notification (4xx): retrying will not help."""


class SellerWebhookUnreachable(TransientDownstreamError):
    """The seller's endpoint gave no answer (refused, timed out, connection broken): worth retrying."""


class EmailNotSent(TransientDownstreamError):
    """The mail server did not take the message (an SMTP or socket error, chained): worth retrying."""


class SellersNotNotified(Exception):
    """Several sellers of one order could not be notified, none for a reason worth retrying."""


class SellersNotNotifiedTransient(SellersNotNotified, TransientDownstreamError):
    """Several sellers of one order could not be notified, at least one for a reason worth retrying."""


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
        _send_email(
            EmailMessage(
                subject=f"Your order #{order['order_id']} is confirmed",
                body=(
                    f"Hello {buyer['name']},\n\nThank you for your order #{order['order_id']}.\n\n{lines}\n\n"
                    f"Total: {order['total']} {order['currency']}\n"
                ),
                to=[buyer["email"]],
                headers={"X-Marketplace-Event-Id": envelope["id"]},
            ),
            failure=f"order #{order['order_id']} confirmation to the buyer via {_mail_server()}",
        )
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

    Every seller is tried, in id order, each in a transaction of its own. If any failed, one
    exception names them all: transient (retried) if any of the failures was, else permanent.
    A retry notifies only the sellers not yet notified.
    """
    order = envelope["data"]
    lines_by_seller: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in order["lines"]:
        lines_by_seller[line["seller_id"]].append(line)
    sellers = seller_contacts(seller_ids=lines_by_seller)
    missing = sorted(set(lines_by_seller) - set(sellers))
    if missing:
        raise UnknownSeller(f"event {envelope['id']} names unknown seller(s) {missing}")

    notified = 0
    failures: list[tuple[SellerContact, Exception]] = []
    last_seller_id = max(lines_by_seller)
    for seller_id, lines in sorted(lines_by_seller.items()):
        seller = sellers[seller_id]
        try:
            with transaction.atomic():
                if _notify_seller_once(seller, envelope, lines):
                    notified += 1
                if seller_id == last_seller_id and not failures:
                    # Every seller is notified once the last one is (when none failed before it),
                    # so the event's marker commits with this transaction rather than one of its own.
                    claim_event(subscriber=SELLER_NOTIFICATION, event_id=envelope["id"])
        except DatabaseError:
            raise  # our own database, not the seller's endpoint: the whole event waits for it
        except Exception as exc:
            logger.warning("order %s: %s", order["order_id"], _failure_text(seller, exc))
            failures.append((seller, exc))
    logger.info("order %s: notified %d of %d seller(s)", order["order_id"], notified, len(lines_by_seller))
    if len(failures) == 1:
        # Raised as it is: its class says what went wrong (the failed-events admin groups by it).
        raise failures[0][1]
    if failures:
        # One failure worth retrying makes the whole event worth retrying; it is the chained cause.
        transient = [exc for _, exc in failures if isinstance(exc, TRANSIENT_ERRORS)]
        not_notified = SellersNotNotifiedTransient if transient else SellersNotNotified
        cause = transient[0] if transient else failures[0][1]
        raise not_notified(
            f"{len(failures)} of {len(lines_by_seller)} sellers of order #{order['order_id']} not notified: "
            + "; ".join(_failure_text(seller, exc) for seller, exc in failures)
        ) from cause
    return notified


def _notify_seller_once(seller: SellerContact, envelope: dict[str, Any], lines: list[dict[str, Any]]) -> bool:
    """Within the caller's transaction, notify the seller unless they already were; True if sent now."""
    notification = Notification(
        event_id=envelope["id"],
        kind=Notification.Kind.SELLER_ORDER,
        seller_id=seller.id,
        channel=Notification.Channel.WEBHOOK if seller.webhook_url else Notification.Channel.EMAIL,
        recipient=seller.webhook_url or seller.email,
        order_id=envelope["data"]["order_id"],
    )
    if not insert_once(notification):
        return False
    if seller.webhook_url:
        _post_webhook(seller, envelope, lines)
    else:
        _email_seller(seller, envelope, lines)
    return True


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


def _post_webhook(seller: SellerContact, envelope: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    body = json.dumps(seller_payload(envelope, lines), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Marketplace-Event-Id": envelope["id"],
        "Idempotency-Key": f"{envelope['id']}:{seller.id}",
    }
    if seller.webhook_secret:
        digest = hmac.new(seller.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Marketplace-Signature"] = f"sha256={digest}"
    try:
        response = httpx.post(
            seller.webhook_url, content=body, headers=headers, timeout=settings.SELLER_WEBHOOK_TIMEOUT
        )
    except httpx.TransportError as exc:
        raise SellerWebhookUnreachable(f"{_seller_endpoint(seller)}: {type(exc).__name__}: {exc}") from exc
    answer = f"{_seller_endpoint(seller)} answered {response.status_code} {response.reason_phrase}".rstrip()
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientDownstreamError(answer)
    if response.status_code >= 400:
        reason = " ".join(response.text.split())[:REJECTION_BODY_CHARS]
        raise SellerWebhookRejected(f"{answer}: {reason}" if reason else answer)


def _email_seller(seller: SellerContact, envelope: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    order = envelope["data"]
    payload = seller_payload(envelope, lines)
    listing = "\n".join(
        f"  {line['quantity']} x {line['name']} ({line['sku']}) = {line['line_total']}" for line in lines
    )
    _send_email(
        EmailMessage(
            subject=f"New order #{order['order_id']}",
            body=(
                f"Hello {seller.name},\n\nOrder #{order['order_id']} includes your products:\n\n{listing}\n\n"
                f"Your total: {payload['seller_total']} {order['currency']}\n"
            ),
            to=[seller.email],
            headers={"X-Marketplace-Event-Id": envelope["id"]},
        ),
        failure=_seller_endpoint(seller),
    )


def _send_email(message: EmailMessage, *, failure: str) -> None:
    """Send ``message``; if the mail server fails, raise EmailNotSent starting with ``failure``."""
    try:
        message.send()
    except OSError as exc:  # smtplib's errors are OSErrors, like the socket's
        raise EmailNotSent(f"{failure}: {type(exc).__name__}: {exc}") from exc


def _seller_endpoint(seller: SellerContact) -> str:
    """The seller and where their notification goes, as failure messages name them."""
    if seller.webhook_url:
        return f"seller {seller.id} ({seller.name}) webhook {seller.webhook_url}"
    return f"seller {seller.id} ({seller.name}) email {seller.email} via {_mail_server()}"


def _mail_server() -> str:
    """Where email goes: the SMTP server, or the backend that stands in for one (console, tests)."""
    if issubclass(import_string(settings.EMAIL_BACKEND), SMTPEmailBackend):
        return f"mail server {settings.EMAIL_HOST}:{settings.EMAIL_PORT}"
    return f"email backend {settings.EMAIL_BACKEND}"


def _failure_text(seller: SellerContact, exc: Exception) -> str:
    # Our own failures already name the seller and the endpoint; anything else (a bug) gets them here.
    if isinstance(exc, (SellerWebhookRejected, TransientDownstreamError)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} for {_seller_endpoint(seller)}: {exc}"
