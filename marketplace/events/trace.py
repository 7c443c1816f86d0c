"""The operator's trace of an event: where it is with each subscriber, and what it produced.

Read-only; every state comes from records the pipeline keeps anyway (the outbox row, processed
markers, failed events, delivery attempts), so this view costs the hot path nothing. With
TRACING_UI_URL set, it also links the event's OpenTelemetry trace (its traceparent) there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.module_loading import import_string

from marketplace import tracing
from marketplace.events import topology
from marketplace.events.models import DeliveryAttempt, FailedEvent, FailedEventReplay, OutboxEvent, ProcessedEvent


@dataclass
class NumberedAttempt:
    """An attempt numbered across the event's whole history: the subscriber counts each delivery
    (the first, or a replay) from 1, which would show two #1s; a replay's attempts say so."""

    number: int
    attempt: DeliveryAttempt

    @property
    def label(self) -> str:
        return f"#{self.number} (replay)" if self.attempt.replay_of_id else f"#{self.number}"

    @property
    def error_first_line(self) -> str:
        return self.attempt.error.split("\n", 1)[0]

    @property
    def error_rest(self) -> str:
        return self.attempt.error.partition("\n")[2]


def numbered(attempts: Iterable[DeliveryAttempt]) -> list[NumberedAttempt]:
    return [NumberedAttempt(number, attempt) for number, attempt in enumerate(attempts, start=1)]


@dataclass
class SubscriberState:
    subscriber: str
    # done, retrying, failed, replay requested, archived, pending, not published yet, not subscribed
    state: str
    at: datetime | None = None
    failed_event: FailedEvent | None = None
    attempts: list[NumberedAttempt] = field(default_factory=list)
    effects: list[tuple[str, str]] = field(default_factory=list)

    @property
    def history(self) -> str:
        """What happened with the failed event, next to the state: 'failed (event #4), then
        resolved by replay' for a done subscriber; empty when nothing failed."""
        failed = self.failed_event
        if failed is None:
            return ""
        if self.state != "done":
            return ""  # the state says it: failed, replay requested, archived
        if failed.status == FailedEvent.Status.RESOLVED:
            replayed = FailedEventReplay.objects.filter(
                failed_event=failed,
                action=FailedEventReplay.Action.REPLAY,
                outcome=FailedEventReplay.Outcome.SUCCEEDED,
            ).exists()
            return "then resolved by replay" if replayed else "then resolved"
        return f"then succeeded (the failed event is {failed.get_status_display().lower()})"


@dataclass
class EventTrace:
    event: OutboxEvent
    subscribers: list[SubscriberState]
    links: list[tuple[str, str]]
    trace_url: str = ""  # the event's trace in the tracing UI (Jaeger), when there is one to show


def trace_link(event_id: uuid.UUID | str, text: str | None = None) -> str:
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
        trace_url=tracing_ui_url(event.envelope),
    )


def tracing_ui_url(envelope: dict[str, Any]) -> str:
    """TRACING_UI_URL with the trace id of the event's ``traceparent``; "" without either."""
    trace_id = tracing.trace_id_of(envelope)
    if not settings.TRACING_UI_URL or trace_id is None:
        return ""
    return str(settings.TRACING_UI_URL).replace("{trace_id}", trace_id)


def _state(subscriber: topology.Subscriber, event: OutboxEvent) -> SubscriberState:
    if event.event_type not in subscriber.event_types:
        return SubscriberState(subscriber.name, "not subscribed")
    attempts = list(DeliveryAttempt.objects.filter(subscriber=subscriber.name, event_id=event.event_id))
    state = SubscriberState(subscriber.name, "pending", attempts=numbered(attempts))
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
