"""Buyer and seller notifications of an order placed or cancelled: plain functions, one call per event.

order.placed: the buyer's confirmation email (send_order_confirmation), each seller's new-order
notification (notify_sellers). order.cancelled: the buyer's cancellation email
(send_order_cancellation), each seller's cancellation notice (notify_sellers_of_cancellation).
Both kinds go through the same machinery below, with their own Notification kind.

Events can arrive out of order (an order.placed retried after its order.cancelled). Every
notification of one order takes a lock on the order first (transaction-scoped, as pgbouncer's
transaction pooling needs), and a new-order message is not sent to whoever was already told of
the cancellation: nobody hears "confirmed" after "cancelled".

Exactly-once effect: the marker row (ProcessedEvent / Notification) is inserted, the message is
sent, and only then does the transaction commit. A failed send rolls the marker back so a retry
sends again; a duplicate delivery finds the committed marker and sends nothing. The one window
left — the provider accepted the message but our commit failed — errs towards a duplicate
rather than a lost confirmation; the event id travels as X-Marketplace-Event-Id (and in the
webhook's webhook-id and Idempotency-Key) so a provider or seller can drop that duplicate too.

Webhooks are signed as Standard Webhooks (notifications/webhooks.py, docs/events.md) and go only
to https URLs on public addresses, checked on the address connected to: a refused URL is a
permanent failure (SellerWebhookRefused).

Sellers are independent of each other: each seller's notification is a transaction of its own,
so one seller's broken endpoint neither stops nor undoes the others'. A failure message names
the seller and where the notification went (webhook URL, or email address and mail server).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import EmailMessage
from django.db import DatabaseError, transaction

from marketplace.events.errors import TRANSIENT_ERRORS, TransientDownstreamError
from marketplace.events.failure_groups import root_cause_line
from marketplace.events.subscriber import claim_event, insert_once
from marketplace.mail import mail_server, send_email
from marketplace.redaction import redact_url
from notifications import webhooks
from notifications.models import Notification
from orders.selectors import SellerContact, seller_contacts

logger = logging.getLogger(__name__)

ORDER_CONFIRMATION = "order_confirmation"
SELLER_NOTIFICATION = "seller_notification"
# The event types these handlers understand (the contract's names: docs/events.md).
ORDER_PLACED = "order.placed"
ORDER_CANCELLED = "order.cancelled"
# How much of a refusing seller's answer goes into the failure message: their reason, not a page.
REJECTION_BODY_CHARS = 200


class SellerWebhookRejected(Exception):
    """The seller's endpoint refused the notification (4xx): retrying will not help."""


class SellerWebhookRefused(Exception):
    """We refused to call the seller's webhook URL (an internal address, plain http in production):
    retrying will not help; the seller's URL must be fixed."""


class SellerWebhookUnreachable(TransientDownstreamError):
    """The seller's endpoint gave no answer (refused, timed out, connection broken): worth retrying."""


class SellersNotNotified(Exception):
    """Several sellers of one order could not be notified, none for a reason worth retrying.

    ``root_cause`` is the failure that decides (the first worth retrying, else the first); the
    first line of the message names it (failure_groups.root_cause_line), so that a seller's outage
    is one failure group whether its order had one failing seller or several.
    """

    def __init__(self, summary: str, *, root_cause: Exception):
        self.root_cause = root_cause
        super().__init__(f"{root_cause_line(root_cause)}\n{summary}")


class SellersNotNotifiedTransient(SellersNotNotified, TransientDownstreamError):
    """Several sellers of one order could not be notified, at least one for a reason worth retrying."""


class UnknownSeller(Exception):
    """The event names a seller this service does not know: bad data, not worth retrying."""


def send_order_confirmation(*, envelope: dict[str, Any]) -> bool:
    """Email the buyer their order: lines and total. Returns False if it was already sent."""
    order = envelope["data"]
    return _email_buyer_once(
        envelope,
        kind=Notification.Kind.ORDER_CONFIRMATION,
        subject=f"Your order #{order['order_id']} is confirmed",
        body=(
            f"Hello {order['buyer']['name']},\n\nThank you for your order #{order['order_id']}.\n\n"
            f"{_buyer_listing(order)}\n\nTotal: {order['total']} {order['currency']}\n"
        ),
        what="confirmation",
        superseded_by=Notification.Kind.ORDER_CANCELLATION,
    )


def send_order_cancellation(*, envelope: dict[str, Any]) -> bool:
    """Email the buyer that their order was cancelled, and what it held. Returns False if already sent."""
    order = envelope["data"]
    by = "at your request" if order["cancelled_by"] == "buyer" else "by our staff"
    return _email_buyer_once(
        envelope,
        kind=Notification.Kind.ORDER_CANCELLATION,
        subject=f"Your order #{order['order_id']} is cancelled",
        body=(
            f"Hello {order['buyer']['name']},\n\nYour order #{order['order_id']} was cancelled {by}.\n\n"
            f"{_buyer_listing(order)}\n\nTotal: {order['total']} {order['currency']}\n"
        ),
        what="cancellation",
    )


def _buyer_listing(order: dict[str, Any]) -> str:
    return "\n".join(
        f"  {line['quantity']} x {line['name']} ({line['sku']}) @ {line['unit_price']} = {line['line_total']}"
        for line in order["lines"]
    )


def _email_buyer_once(
    envelope: dict[str, Any], *, kind: str, subject: str, body: str, what: str, superseded_by: str | None = None
) -> bool:
    """Marker, send, record, commit: the buyer gets this event's email once. False if already sent,
    or if the order's ``superseded_by`` email was (then it is never sent)."""
    order = envelope["data"]
    buyer = order["buyer"]
    with transaction.atomic():
        _lock_order(order["order_id"])
        if not claim_event(subscriber=ORDER_CONFIRMATION, event_id=envelope["id"]):
            return False
        notification = Notification(
            event_id=envelope["id"],
            kind=kind,
            channel=Notification.Channel.EMAIL,
            recipient=buyer["email"],
            order_id=order["order_id"],
        )
        superseding = {"order_id": order["order_id"], "kind": superseded_by} if superseded_by else None
        if not insert_once(notification, unless=superseding):
            logger.info("order %s: %s not sent, the buyer was told it is cancelled", order["order_id"], what)
            return False
        send_email(
            EmailMessage(
                subject=subject, body=body, to=[buyer["email"]], headers={"X-Marketplace-Event-Id": envelope["id"]}
            ),
            failure=f"order #{order['order_id']} {what} to the buyer via {mail_server()}",
        )
    logger.info("order %s: %s emailed to %s", order["order_id"], what, buyer["email"])
    return True


# What a seller's email says: (seller, order data, their lines as text, their total) -> (subject, body).
SellerEmail = Callable[[SellerContact, dict[str, Any], str, str], tuple[str, str]]


def _new_order_email(seller: SellerContact, order: dict[str, Any], listing: str, seller_total: str) -> tuple[str, str]:
    return (
        f"New order #{order['order_id']}",
        f"Hello {seller.name},\n\nOrder #{order['order_id']} includes your products:\n\n{listing}\n\n"
        f"Your total: {seller_total} {order['currency']}\n",
    )


def _cancelled_order_email(
    seller: SellerContact, order: dict[str, Any], listing: str, seller_total: str
) -> tuple[str, str]:
    return (
        f"Order #{order['order_id']} cancelled",
        f"Hello {seller.name},\n\nOrder #{order['order_id']} was cancelled. Do not ship your products in it:\n\n"
        f"{listing}\n\nYour total was: {seller_total} {order['currency']}\n",
    )


def notify_sellers(*, envelope: dict[str, Any]) -> int:
    """Tell each seller in the order about their own lines only. Returns how many were notified now.

    Every seller is tried, in id order, each in a transaction of its own. If any failed, one
    exception names them all: transient (retried) if any of the failures was, else permanent.
    A retry notifies only the sellers not yet notified.
    """
    return _notify_each_seller(
        envelope,
        kind=Notification.Kind.SELLER_ORDER,
        email=_new_order_email,
        superseded_by=Notification.Kind.SELLER_ORDER_CANCELLED,
    )


def notify_sellers_of_cancellation(*, envelope: dict[str, Any]) -> int:
    """Tell each seller in a cancelled order that their own lines are cancelled; like notify_sellers
    (same channels, independence, failures and retries). Returns how many were notified now."""
    return _notify_each_seller(envelope, kind=Notification.Kind.SELLER_ORDER_CANCELLED, email=_cancelled_order_email)


def _notify_each_seller(
    envelope: dict[str, Any], *, kind: str, email: SellerEmail, superseded_by: str | None = None
) -> int:
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
                if _notify_seller_once(seller, envelope, lines, kind=kind, email=email, superseded_by=superseded_by):
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
    logger.info(
        "order %s: notified %d of %d seller(s) of %s",
        order["order_id"],
        notified,
        len(lines_by_seller),
        envelope["type"],
    )
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
            + "; ".join(_failure_text(seller, exc) for seller, exc in failures),
            root_cause=cause,
        ) from cause
    return notified


def _notify_seller_once(
    seller: SellerContact,
    envelope: dict[str, Any],
    lines: list[dict[str, Any]],
    *,
    kind: str,
    email: SellerEmail,
    superseded_by: str | None,
) -> bool:
    """Within the caller's transaction, notify the seller unless they already were, or were already
    sent the order's ``superseded_by`` notification; True if sent now."""
    order_id = envelope["data"]["order_id"]
    _lock_order(order_id)
    notification = Notification(
        event_id=envelope["id"],
        kind=kind,
        seller_id=seller.id,
        channel=Notification.Channel.WEBHOOK if seller.webhook_url else Notification.Channel.EMAIL,
        recipient=redact_url(seller.webhook_url) if seller.webhook_url else seller.email,
        order_id=order_id,
    )
    # A statement after the lock's: it sees a cancellation notice committed while the lock was awaited.
    superseding = {"order_id": order_id, "kind": superseded_by, "seller_id": seller.id} if superseded_by else None
    if not insert_once(notification, unless=superseding):
        logger.info("order %s: seller %s was already told of it, or told it is cancelled", order_id, seller.id)
        return False
    if seller.webhook_url:
        _post_webhook(seller, envelope, lines)
    else:
        _email_seller(seller, envelope, lines, email)
    return True


def _lock_order(order_id: int) -> None:
    """Until the caller's transaction ends, take turns with every other notification of this order
    (a cancellation sent while its order's confirmation is still being sent would be overtaken)."""
    key = hashlib.sha256(f"notifications:order:{order_id}".encode()).digest()[:8]
    with transaction.get_connection().cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(key, "big", signed=True)])


def seller_payload(envelope: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A seller's webhook body: the event's type and the seller's own lines (and, for a
    cancellation, when and by whom it was cancelled)."""
    order = envelope["data"]
    payload = {
        "event_id": envelope["id"],
        "event_type": envelope["type"],
        "order_id": order["order_id"],
        "status": order["status"],
        "placed_at": order["placed_at"],
        "currency": order["currency"],
        "lines": lines,
        "seller_total": str(sum((Decimal(line["line_total"]) for line in lines), Decimal("0.00"))),
    }
    if envelope["type"] == ORDER_CANCELLED:
        payload |= {"cancelled_at": order["cancelled_at"], "cancelled_by": order["cancelled_by"]}
    return payload


def _post_webhook(seller: SellerContact, envelope: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    body = json.dumps(seller_payload(envelope, lines), separators=(",", ":")).encode()
    # One id per (event, seller): the same on every retry and replay, so the seller can drop a duplicate.
    delivery_id = f"{envelope['id']}:{seller.id}"
    secrets = [secret for secret in (seller.webhook_secret, seller.webhook_secret_next) if secret]
    headers = {
        "Content-Type": "application/json",
        "X-Marketplace-Event-Id": envelope["id"],
        "X-Marketplace-Event-Type": envelope["type"],
        "Idempotency-Key": delivery_id,
        **webhooks.signature_headers(msg_id=delivery_id, body=body, secrets=secrets),
    }
    if secrets and not secrets[0].startswith(webhooks.SECRET_PREFIX):  # deprecated: plain secrets only
        headers["X-Marketplace-Signature"] = webhooks.legacy_signature(secret=secrets[0], body=body)
    try:
        # Never follows a redirect (a 3xx could point anywhere); no proxy from the environment.
        with httpx.Client(transport=webhooks.SafeWebhookTransport(), trust_env=False) as client:
            response = client.post(
                seller.webhook_url, content=body, headers=headers, timeout=settings.SELLER_WEBHOOK_TIMEOUT
            )
    except webhooks.UnsafeWebhookTarget as exc:
        raise SellerWebhookRefused(f"{_seller_endpoint(seller)} refused: {exc}") from exc
    except httpx.TransportError as exc:
        raise SellerWebhookUnreachable(f"{_seller_endpoint(seller)}: {type(exc).__name__}: {exc}") from exc
    answer = f"{_seller_endpoint(seller)} answered {response.status_code} {response.reason_phrase}".rstrip()
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientDownstreamError(answer)
    if response.status_code >= 400:
        reason = " ".join(response.text.split())[:REJECTION_BODY_CHARS]
        raise SellerWebhookRejected(f"{answer}: {reason}" if reason else answer)


def _email_seller(
    seller: SellerContact, envelope: dict[str, Any], lines: list[dict[str, Any]], email: SellerEmail
) -> None:
    order = envelope["data"]
    payload = seller_payload(envelope, lines)
    listing = "\n".join(
        f"  {line['quantity']} x {line['name']} ({line['sku']}) = {line['line_total']}" for line in lines
    )
    subject, body = email(seller, order, listing, payload["seller_total"])
    send_email(
        EmailMessage(subject=subject, body=body, to=[seller.email], headers={"X-Marketplace-Event-Id": envelope["id"]}),
        failure=_seller_endpoint(seller),
    )


def _seller_endpoint(seller: SellerContact) -> str:
    """The seller and where their notification goes, as failure messages name them."""
    if seller.webhook_url:
        # Credentials in the URL (user:password@, ?token=) never reach a log line or a failure record.
        return f"seller {seller.id} ({seller.name}) webhook {redact_url(seller.webhook_url)}"
    return f"seller {seller.id} ({seller.name}) email {seller.email} via {mail_server()}"


def _failure_text(seller: SellerContact, exc: Exception) -> str:
    # Our own failures already name the seller and the endpoint; anything else (a bug) gets them here.
    if isinstance(exc, (SellerWebhookRejected, SellerWebhookRefused, TransientDownstreamError)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} for {_seller_endpoint(seller)}: {exc}"
