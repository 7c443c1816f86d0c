"""The operator's trace of an event: where it is with each subscriber, and what it produced.

Read-only; every state comes from records the pipeline keeps anyway (the outbox row, processed
markers, failed events, delivery attempts), so tracing costs the hot path nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.module_loading import import_string

from marketplace.events import topology
from marketplace.events.models import DeliveryAttempt, FailedEvent, OutboxEvent, ProcessedEvent


@dataclass
class SubscriberState:
    subscriber: str
    # done, retrying, failed, replaying, archived, pending, not published yet, not subscribed
    state: str
    at: datetime | None = None
    failed_event: FailedEvent | None = None
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    effects: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EventTrace:
    event: OutboxEvent
    subscribers: list[SubscriberState]
    links: list[tuple[str, str]]


def trace_link(event_id, text: str | None = None) -> str:
    """An admin link to the event's trace, for any app's admin (showing the event id by default)."""
    return format_html('<a href="{}">{}</a>', reverse("admin:events_trace_event", args=[event_id]), text or event_id)


def order_event_traces(order_id: int) -> list[EventTrace]:
    events = OutboxEvent.objects.filter(envelope__data__order_id=order_id).order_by("id")
    return [event_trace(event) for event in events]


def event_trace(event: OutboxEvent) -> EventTrace:
    return EventTrace(
        event=event,
        subscribers=[_state(subscriber, event) for subscriber in topology.SUBSCRIBERS],
        links=_links(event.envelope),
    )


def _state(subscriber: topology.Subscriber, event: OutboxEvent) -> SubscriberState:
    if event.event_type not in subscriber.event_types:
        return SubscriberState(subscriber.name, "not subscribed")
    attempts = list(DeliveryAttempt.objects.filter(subscriber=subscriber.name, event_id=event.event_id))
    state = SubscriberState(subscriber.name, "pending", attempts=attempts)
    processed = ProcessedEvent.objects.filter(subscriber=subscriber.name, event_id=event.event_id).first()
    failed = FailedEvent.objects.filter(subscriber=subscriber.name, event_id=event.event_id).first()
    state.failed_event = failed
    if processed is not None:
        state.state, state.at = "done", processed.processed_at
    elif failed is not None and failed.status != FailedEvent.Status.RESOLVED:
        state.state, state.at = failed.get_status_display().lower(), failed.last_failed_at
    elif attempts and attempts[-1].outcome in (DeliveryAttempt.Outcome.RETRYING, DeliveryAttempt.Outcome.WAITING):
        state.state, state.at = "retrying", attempts[-1].started_at
    elif not event.is_published:
        state.state = "not published yet"
    if subscriber.effects:
        state.effects = import_string(subscriber.effects)(event.envelope)
    return state


def _links(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    """Admin links to what the event is about: its order, buyer and sellers (when those pages exist)."""
    data = envelope.get("data") or {}
    wanted = [("order", "admin:orders_order_change", data.get("order_id"))]
    buyer = data.get("buyer") or {}
    wanted.append((f"buyer {buyer.get('email', '')}".strip(), "admin:auth_user_change", buyer.get("id")))
    sellers = sorted({line.get("seller_id") for line in data.get("lines") or [] if line.get("seller_id")})
    wanted += [(f"seller {seller_id}", "admin:orders_seller_change", seller_id) for seller_id in sellers]
    links = []
    for label, url_name, pk in wanted:
        if pk is None:
            continue
        try:
            links.append((f"{label} #{pk}" if label.startswith("order") else label, reverse(url_name, args=[pk])))
        except NoReverseMatch:
            continue
    return links
