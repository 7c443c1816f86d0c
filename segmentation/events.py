"""The events the segmentation subscriber publishes. Who consumes them is not this module's business."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marketplace.events.envelope import build_envelope
from segmentation.models import CustomerProfile

SOURCE = "marketplace/segmentation"
SEGMENT_CHANGED = "customer.segment_changed"
SEGMENT_CHANGED_VERSION = 1
CENT = Decimal("0.01")


def segment_changed_envelope(
    *, profile: CustomerProfile, previous_segment: str, cause: dict[str, Any]
) -> dict[str, Any]:
    """``profile`` (saved, so ``updated_at`` is when it changed) moved from ``previous_segment``
    while handling the event ``cause``, whose correlation id it carries on."""
    return build_envelope(
        event_type=SEGMENT_CHANGED,
        version=SEGMENT_CHANGED_VERSION,
        data={
            "buyer": dict(cause["data"]["buyer"]),
            "previous_segment": previous_segment,
            "segment": profile.segment,
            "profile": {
                "order_count": profile.order_count,
                "lifetime_spend": str(profile.lifetime_spend.quantize(CENT)),
                "average_order_value": str(profile.average_order_value.quantize(CENT)),
            },
            "caused_by": {
                "event_id": cause["id"],
                "event_type": cause["type"],
                "order_id": cause["data"]["order_id"],
            },
        },
        occurred_at=profile.updated_at,
        correlation_id=cause["correlation_id"],
        source=SOURCE,
    )
