from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from marketplace.events.subscriber import claim_event
from segmentation.models import CustomerProfile

logger = logging.getLogger(__name__)

CUSTOMER_SEGMENTATION = "customer_segmentation"
CENT = Decimal("0.01")


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
    """Count the order into the buyer's profile and re-segment them, once per event."""
    order = envelope["data"]
    placed_at = datetime.fromisoformat(order["placed_at"])
    with transaction.atomic():
        if not claim_event(subscriber=CUSTOMER_SEGMENTATION, event_id=envelope["id"]):
            return False
        profile, _ = CustomerProfile.objects.select_for_update().get_or_create(buyer_id=order["buyer"]["id"])
        profile.order_count += 1
        profile.lifetime_spend += Decimal(order["total"])
        profile.average_order_value = (profile.lifetime_spend / profile.order_count).quantize(CENT)
        profile.first_order_at = min(filter(None, [profile.first_order_at, placed_at]))
        profile.last_order_at = max(filter(None, [profile.last_order_at, placed_at]))
        profile.segment = segment_for(order_count=profile.order_count, lifetime_spend=profile.lifetime_spend)
        profile.save()
    logger.info(
        "buyer %s is %s: %d order(s), %s spent",
        profile.buyer_id,
        profile.segment,
        profile.order_count,
        profile.lifetime_spend,
    )
    return True
