"""Customer segmentation: each buyer's profile (order count, spend, average, segment) from order events.

order.placed counts the order in (update_customer_segment), order.cancelled takes it out again
(remove_cancelled_order). Events arrive late, out of order and more than once, so the profile is
never a running sum of whatever arrives: every order has a CustomerOrder row saying whether it is
counted and whether it was cancelled, and an event changes the profile only when it changes that
row's state:

    row state           order.placed                  order.cancelled
    (none)              counted: count it in          cancelled (not counted): nothing to take out
    counted             nothing (counted already)     cancelled: take it out, once
    cancelled           nothing (stays out)           nothing (cancelled already)

So an order.placed retried after its order.cancelled counts nothing, and the profile never goes
negative. Every event of one buyer locks their profile row first, so these transitions are
serialised per buyer; the event's ProcessedEvent marker, the row, the profile and the
customer.segment_changed event (when the segment moved) commit in one transaction, or none does.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min

from marketplace.events.outbox import enqueue_event
from marketplace.events.subscriber import claim_event, insert_once
from segmentation.events import segment_changed_envelope
from segmentation.models import CustomerOrder, CustomerProfile

logger = logging.getLogger(__name__)

CUSTOMER_SEGMENTATION = "customer_segmentation"
# The event types this subscriber understands (the contract's names: docs/events.md).
ORDER_PLACED = "order.placed"
ORDER_CANCELLED = "order.cancelled"
CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def segment_for(*, order_count: int, lifetime_spend: Decimal) -> str:
    """Thresholds live in settings (SEGMENT_*): high value beats loyal beats returning beats new."""
    if lifetime_spend >= Decimal(settings.SEGMENT_HIGH_VALUE_SPEND):
        return CustomerProfile.Segment.HIGH_VALUE
    if order_count >= settings.SEGMENT_LOYAL_ORDERS:
        return CustomerProfile.Segment.LOYAL
    if order_count >= settings.SEGMENT_RETURNING_ORDERS:
        return CustomerProfile.Segment.RETURNING
    return CustomerProfile.Segment.NEW


def update_customer_segment(*, envelope: dict[str, Any]) -> bool:
    """Count a placed order into the buyer's profile and re-segment them.

    Returns True if the order was counted now; False for a duplicate, an order counted already
    or one already cancelled.
    """
    order = envelope["data"]
    total, placed_at = Decimal(order["total"]), datetime.fromisoformat(order["placed_at"])
    with transaction.atomic():
        if not claim_event(subscriber=CUSTOMER_SEGMENTATION, event_id=envelope["id"]):
            return False
        profile = _locked_profile(buyer_id=order["buyer"]["id"])
        # A row exists only once the order is counted or cancelled: either way, nothing to count.
        counted = CustomerOrder(
            profile=profile, order_id=order["order_id"], total=total, placed_at=placed_at, counted=True
        )
        if not insert_once(counted):
            logger.info("order %s is counted or cancelled already: not counted again", order["order_id"])
            return False
        previous_segment = profile.segment
        profile.order_count += 1
        profile.lifetime_spend += total
        profile.first_order_at = min(filter(None, [profile.first_order_at, placed_at]))
        profile.last_order_at = max(filter(None, [profile.last_order_at, placed_at]))
        _resegment(profile, previous_segment=previous_segment, cause=envelope)
    _log(profile, envelope)
    return True


def remove_cancelled_order(*, envelope: dict[str, Any]) -> bool:
    """Take a cancelled order out of the buyer's profile and re-segment them.

    Returns True if the order was taken out now; False for a duplicate, an order cancelled
    already, or one not counted yet (its order.placed, should it come later, counts nothing).
    """
    order = envelope["data"]
    cancelled_at = datetime.fromisoformat(order["cancelled_at"])
    with transaction.atomic():
        if not claim_event(subscriber=CUSTOMER_SEGMENTATION, event_id=envelope["id"]):
            return False
        profile = _locked_profile(buyer_id=order["buyer"]["id"])
        row, created = CustomerOrder.objects.get_or_create(
            profile=profile,
            order_id=order["order_id"],
            defaults={
                "total": Decimal(order["total"]),
                "placed_at": datetime.fromisoformat(order["placed_at"]),
                "cancelled_at": cancelled_at,
            },
        )
        if row.cancelled:
            # Created just now, its order.placed not seen yet: this row keeps the order out for good.
            # Or cancelled already: a second cancellation changes nothing.
            logger.info(
                "order %s %s: nothing to take out of the profile",
                row.order_id,
                "cancelled before it was counted" if created else "cancelled already",
            )
            return False
        counted, row.counted, row.cancelled_at = row.counted, False, cancelled_at
        row.save(update_fields=["counted", "cancelled_at", "updated_at"])
        if not counted:
            return False
        previous_segment = profile.segment
        # What was counted comes out, exactly; clamped so that no data error can make it negative.
        profile.order_count = max(0, profile.order_count - 1)
        profile.lifetime_spend = max(ZERO, profile.lifetime_spend - row.total)
        profile.first_order_at, profile.last_order_at = _order_span(profile)
        _resegment(profile, previous_segment=previous_segment, cause=envelope)
    _log(profile, envelope)
    return True


def _locked_profile(*, buyer_id: int) -> CustomerProfile:
    """The buyer's profile, locked until the transaction ends: one buyer's events take turns."""
    # Raw SQL for the usual case, a profile that exists: composing this query through the ORM for
    # every event cost more CPU than the database spent running it.
    profile = next(iter(CustomerProfile.objects.raw(_LOCK_PROFILE, [buyer_id])), None)
    if profile is None:
        profile, _ = CustomerProfile.objects.select_for_update().get_or_create(buyer_id=buyer_id)
    return profile


_LOCK_PROFILE = f"SELECT * FROM {CustomerProfile._meta.db_table} WHERE buyer_id = %s FOR UPDATE"  # noqa: S608 - the model's table


def _order_span(profile: CustomerProfile) -> tuple[datetime | None, datetime | None]:
    """First and last order time of the orders still counted."""
    span = profile.orders.filter(counted=True).aggregate(n=Count("id"), first=Min("placed_at"), last=Max("placed_at"))
    if span["n"] != profile.order_count:
        # Orders counted before CustomerOrder rows existed (and older than the outbox's retention,
        # which migration 0003 backfilled from) are not all in the rows: keep what the profile says.
        return profile.first_order_at, profile.last_order_at
    return span["first"], span["last"]


def _resegment(profile: CustomerProfile, *, previous_segment: str, cause: dict[str, Any]) -> None:
    """Derive average and segment, save; if the segment moved, put customer.segment_changed in the
    outbox in this same transaction (published when it commits, never if it rolls back)."""
    profile.average_order_value = (
        (profile.lifetime_spend / profile.order_count).quantize(CENT) if profile.order_count else ZERO
    )
    profile.segment = segment_for(order_count=profile.order_count, lifetime_spend=profile.lifetime_spend)
    profile.save()
    if profile.segment != previous_segment:
        enqueue_event(segment_changed_envelope(profile=profile, previous_segment=previous_segment, cause=cause))


def _log(profile: CustomerProfile, envelope: dict[str, Any]) -> None:
    logger.info(
        "buyer %s is %s after %s of order %s: %d order(s), %s spent",
        profile.buyer_id,
        profile.segment,
        envelope["type"],
        envelope["data"]["order_id"],
        profile.order_count,
        profile.lifetime_spend,
    )
