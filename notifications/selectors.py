"""What the operator's trace view shows of this app's effects (see topology.Subscriber.effects)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils import timezone

from notifications.models import Notification


def _effects(envelope: dict[str, Any], kinds: list[str]) -> list[tuple[str, str]]:
    notifications = Notification.objects.filter(event_id=envelope["id"], kind__in=kinds).order_by("sent_at")
    return [
        (
            f"{n.get_kind_display()} by {n.get_channel_display().lower()} to {n.recipient}, "
            f"sent {timezone.localtime(n.sent_at):%Y-%m-%d %H:%M:%S}",
            reverse("admin:notifications_notification_change", args=[n.pk]),
        )
        for n in notifications
    ]


def confirmation_effects(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    return _effects(envelope, [Notification.Kind.ORDER_CONFIRMATION, Notification.Kind.ORDER_CANCELLATION])


def seller_effects(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    return _effects(envelope, [Notification.Kind.SELLER_ORDER, Notification.Kind.SELLER_ORDER_CANCELLED])
