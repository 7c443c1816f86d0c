"""What the operator's trace view shows of this app's effects (see topology.Subscriber.effects)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from segmentation.models import CustomerProfile


def profile_effects(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    buyer_id = (envelope.get("data") or {}).get("buyer", {}).get("id")
    profile = CustomerProfile.objects.filter(buyer_id=buyer_id).first()
    if profile is None:
        return []
    return [
        (
            f"buyer profile now: {profile.get_segment_display()}, {profile.order_count} order(s), "
            f"{profile.lifetime_spend} spent",
            reverse("admin:segmentation_customerprofile_change", args=[profile.pk]),
        )
    ]
