"""Writing events: inside the caller's transaction, published right after it commits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from marketplace.events.models import OutboxEvent
from marketplace.events.publisher import publish_after_commit


def enqueue_event(envelope: dict[str, Any]) -> OutboxEvent:
    """Store ``envelope`` in the outbox as part of the current transaction, publish it on commit.

    The row is born claimed by this process's on-commit publisher, so the relay leaves it alone
    unless that publisher has not confirmed it within OUTBOX_CLAIM_SECONDS (e.g. it crashed).
    A rolled-back transaction leaves neither a row nor a publish.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("enqueue_event must run inside the transaction that makes the change")
    row = OutboxEvent.objects.create(
        event_id=envelope["id"],
        event_type=envelope["type"],
        envelope=envelope,
        claimed_until=timezone.now() + timedelta(seconds=settings.OUTBOX_CLAIM_SECONDS),
    )
    # robust: the order is committed by now; a failure here must never turn its 201 into a 500.
    transaction.on_commit(lambda: publish_after_commit(row.pk, envelope), robust=True)
    return row
