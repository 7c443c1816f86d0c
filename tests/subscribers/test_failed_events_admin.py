"""Failed events in the admin and on the command line: filters, summary, replay permission, audit."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from marketplace.events import topology
from marketplace.events.models import FailedEvent, FailedEventReplay
from tests.conftest import queue_depth
from tests.factories import BuyerFactory

pytestmark = [pytest.mark.django_db]


def make_failed(subscriber="order_confirmation", exception="builtins.ConnectionError", **fields) -> FailedEvent:
    event_id = uuid.uuid4()
    defaults = {
        "event_id": event_id,
        "event_type": "order.placed",
        "payload": {"id": str(event_id), "type": "order.placed", "version": 1},
        "exception_message": "provider down",
        "traceback": "Traceback (most recent call last): ...",
        "attempts": 6,
        "last_failed_at": timezone.now(),
    }
    return FailedEvent.objects.create(subscriber=subscriber, exception_class=exception, **{**defaults, **fields})


@pytest.fixture
def staff_client(client):
    def login(*permissions: str):
        user = BuyerFactory(is_staff=True)
        user.user_permissions.add(
            *(Permission.objects.get(codename=codename) for codename in ("view_failedevent", *permissions))
        )
        client.force_login(user)
        return user

    return login


@pytest.fixture
def empty_queues(broker, purge_queues):
    return broker


def test_changelist_filters_and_counts_per_subscriber_and_exception(staff_client, client):
    staff_client()
    make_failed()
    make_failed()
    make_failed(subscriber="seller_notification", exception="notifications.handlers.SellerWebhookRejected")
    make_failed(status=FailedEvent.Status.RESOLVED)

    url = reverse("admin:events_failedevent_changelist")
    page = client.get(url).content.decode()
    assert "Open failures by subscriber and exception" in page
    assert "<td>order_confirmation</td><td>builtins.ConnectionError</td><td>2</td>" in page
    assert "<td>seller_notification</td><td>notifications.handlers.SellerWebhookRejected</td><td>1</td>" in page

    for query, expected in [
        ("?subscriber=seller_notification", 1),
        ("?status__exact=resolved", 1),
        ("?exception_class=builtins.ConnectionError", 3),
    ]:
        response = client.get(url + query)
        assert response.status_code == 200
        assert response.context["cl"].result_count == expected, query


def test_detail_page_shows_payload_and_traceback(staff_client, client):
    staff_client()
    failed = make_failed()
    page = client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()
    assert str(failed.event_id) in page
    assert "Traceback (most recent call last)" in page


def _offered_actions(client) -> set[str]:
    form = client.get(reverse("admin:events_failedevent_changelist")).context["action_form"]
    return set() if form is None else set(dict(form.fields["action"].choices)) - {""}


def test_replay_needs_its_own_permission(staff_client, client):
    staff_client()
    assert "replay" not in _offered_actions(client)
    staff_client("replay_failedevent")
    assert {"replay", "archive"} <= _offered_actions(client)


def test_replay_action_sends_to_the_subscribers_own_queue_and_is_audited(staff_client, client, empty_queues):
    user = staff_client("replay_failedevent")
    failed = make_failed(subscriber="customer_segmentation")

    response = client.post(
        reverse("admin:events_failedevent_changelist"),
        {"action": "replay", "_selected_action": [failed.pk]},
        follow=True,
    )
    assert response.status_code == 200

    failed.refresh_from_db()
    assert failed.status == FailedEvent.Status.REPLAYING
    [audit] = FailedEventReplay.objects.all()
    assert (audit.failed_event, audit.requested_by, audit.via) == (failed, user, "admin")
    depths = {s.name: queue_depth(empty_queues, s.queue_name) for s in topology.SUBSCRIBERS}
    assert depths == {"order_confirmation": 0, "seller_notification": 0, "customer_segmentation": 1}


def test_archive_action(staff_client, client):
    staff_client("replay_failedevent")
    failed = make_failed()
    client.post(reverse("admin:events_failedevent_changelist"), {"action": "archive", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.status == FailedEvent.Status.ARCHIVED


def test_failed_events_cannot_be_deleted_in_the_admin(client):
    client.force_login(BuyerFactory(is_staff=True, is_superuser=True))
    failed = make_failed()

    assert client.get(reverse("admin:events_failedevent_delete", args=[failed.pk])).status_code == 403
    client.post(
        reverse("admin:events_failedevent_changelist"), {"action": "delete_selected", "_selected_action": [failed.pk]}
    )

    assert FailedEvent.objects.filter(pk=failed.pk).exists()


def test_replay_command_selects_by_subscriber_id_and_since(empty_queues, capsys):
    old = make_failed(last_failed_at=timezone.now() - timedelta(days=3))
    recent = make_failed()
    other = make_failed(subscriber="seller_notification")
    archived = make_failed(status=FailedEvent.Status.ARCHIVED)

    call_command("replay_failed_events", "--dry-run")
    out = capsys.readouterr().out
    assert "would replay 3 failed event(s)" in out
    assert str(archived.event_id) not in out
    assert not FailedEventReplay.objects.exists()

    since = (timezone.now() - timedelta(days=1)).date().isoformat()
    call_command("replay_failed_events", "--subscriber", "order_confirmation", "--since", since)
    assert list(FailedEventReplay.objects.values_list("failed_event", flat=True)) == [recent.pk]

    call_command("replay_failed_events", "--id", str(old.pk), "--id", str(other.pk))
    assert set(FailedEventReplay.objects.values_list("failed_event", flat=True)) == {recent.pk, old.pk, other.pk}
    assert queue_depth(empty_queues, topology.subscriber_named("order_confirmation").queue_name) == 2
    assert queue_depth(empty_queues, topology.subscriber_named("seller_notification").queue_name) == 1


def test_an_unreadable_message_cannot_be_replayed(empty_queues, capsys):
    make_failed(payload=None, event_id=None, raw_body="{not json")
    call_command("replay_failed_events")
    captured = capsys.readouterr()
    assert "holds no decodable event" in captured.err
    assert "replayed 0 failed event(s)" in captured.out


def test_a_dead_letter_of_any_bytes_is_recorded_and_shown(staff_client, client):
    from marketplace.events import dead_letters

    body = b'{"a": "x\x00y", "b": "\xff"}'
    headers = {
        "x-first-death-reason": "delivery_limit",
        "x-first-death-queue": "marketplace.order_confirmation",
        "x-death": [{"count": 1, "reason": "delivery_limit", "queue": "marketplace.order_confirmation"}],
    }
    subscriber = topology.subscriber_named("order_confirmation")
    assert dead_letters.record(subscriber=subscriber, body=body, headers=headers, content_type="application/json")
    assert not dead_letters.record(subscriber=subscriber, body=body, headers=headers)  # seen: recorded once

    failed = FailedEvent.objects.get()
    assert bytes(failed.body) == body
    assert failed.event_id is None
    assert failed.payload is None
    assert failed.exception_class == "marketplace.DeliveryLimitReached"
    staff_client()
    page = client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()
    assert "RabbitMQ (delivery_limit) from marketplace.order_confirmation" in page
    assert "x\\x00y" in page
