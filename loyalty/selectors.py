"""What the operator's trace view shows of this app's effects (see topology.Subscriber.effects)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils import timezone

from loyalty.models import RewardCode


def reward_effects(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    """The reward code the event created; for an event into a segment the buyer had a code for
    already, that earlier code (which is why none was sent)."""
    rewards = list(RewardCode.objects.filter(event_id=envelope["id"]))
    if rewards:
        return [
            (
                f"{r.get_segment_display()} reward code {r.code} for buyer {r.buyer_id}, "
                f"created {timezone.localtime(r.created_at):%Y-%m-%d %H:%M:%S}",
                _url(r),
            )
            for r in rewards
        ]
    change = envelope.get("data") or {}
    earlier = RewardCode.objects.filter(
        buyer_id=(change.get("buyer") or {}).get("id"), segment=change.get("segment")
    ).first()
    if earlier is None:
        return []
    return [
        (
            f"none sent by this event: buyer {earlier.buyer_id} has had their {earlier.get_segment_display()} "
            f"reward code {earlier.code} since {timezone.localtime(earlier.created_at):%Y-%m-%d %H:%M:%S}",
            _url(earlier),
        )
    ]


def _url(reward: RewardCode) -> str:
    return reverse("admin:loyalty_rewardcode_change", args=[reward.pk])
