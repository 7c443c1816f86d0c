"""What an operator sees: the outbox lag on /healthz and the outbox in the admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.events.models import OutboxEvent

pytestmark = [pytest.mark.broker]


def test_healthz_reports_no_lag_when_the_outbox_is_empty(client, db):
    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "outbox_lag_seconds": 0.0,
        "topology": "ok",
    }


def test_healthz_reports_the_age_of_the_oldest_pending_event(client, pending_events):
    old, _newer, published = pending_events(3)
    now = timezone.now()
    OutboxEvent.objects.filter(pk=published.pk).update(
        created_at=now - timedelta(hours=1), published_at=now - timedelta(minutes=59)
    )
    OutboxEvent.objects.filter(pk=old.pk).update(created_at=now - timedelta(seconds=120))

    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    assert 120 <= response.json()["outbox_lag_seconds"] < 180


def test_the_admin_lists_the_outbox_filtered_by_state(admin_client, pending_events):
    pending, published = pending_events(2)
    OutboxEvent.objects.filter(pk=published.pk).update(published_at=timezone.now(), attempts=1)
    OutboxEvent.objects.filter(pk=pending.pk).update(attempts=3, last_error="OperationalError: connection refused")

    everything = admin_client.get("/admin/events/outboxevent/")
    only_pending = admin_client.get("/admin/events/outboxevent/", {"state": "pending"})
    only_published = admin_client.get("/admin/events/outboxevent/", {"state": "published"})
    detail = admin_client.get(f"/admin/events/outboxevent/{pending.pk}/change/")

    for response in (everything, only_pending, only_published, detail):
        assert response.status_code == 200
    assert str(pending.event_id) in everything.text
    assert str(published.event_id) in everything.text
    assert str(pending.event_id) in only_pending.text
    assert "connection refused" in only_pending.text
    assert str(published.event_id) not in only_pending.text
    assert str(published.event_id) in only_published.text
    assert str(pending.event_id) not in only_published.text
    assert pending.envelope["correlation_id"] in detail.text
