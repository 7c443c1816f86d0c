"""Failed events in the admin and on the command line: filters, summary, replay permission, audit."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from marketplace.events import topology
from marketplace.events.errors import TransientDownstreamError
from marketplace.events.failure_groups import grouping_fields, message_pattern, root_cause_line
from marketplace.events.models import FailedEvent, FailedEventReplay
from marketplace.events.services import replay_finished
from notifications.handlers import SellersNotNotifiedTransient
from tests.factories import BuyerFactory
from tests.support.broker import queue_depth

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
    fields = {**defaults, **fields}
    grouping = grouping_fields(
        subscriber=subscriber, exception_class=exception, exception_message=fields["exception_message"]
    )
    return FailedEvent.objects.create(subscriber=subscriber, exception_class=exception, **grouping, **fields)


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
    groups = {(g.subscriber, g.exception_class): g.count for g in client.get(url).context["failure_groups"]}
    assert groups == {
        ("order_confirmation", "builtins.ConnectionError"): 2,
        ("seller_notification", "notifications.handlers.SellerWebhookRejected"): 1,
    }

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
    assert depths == {**dict.fromkeys(depths, 0), "customer_segmentation": 1}


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


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (
            "seller 48 (Acme 7) webhook http://127.0.0.1:8999/hooks/48?sig=ab12 answered 503",
            "seller <n> (Acme <n>) webhook http://127.0.0.1:8999/<path> answered <n>",  # the host names the downstream
        ),
        ("POST https://user:secret@hooks.example:8443 refused", "POST https://<userinfo>@hooks.example:8443 refused"),
        (
            "smtp.example.com answered 421 at http://10.0.0.7:25/",
            "smtp.example.com answered <n> at http://10.0.0.7:25/",
        ),
        (
            "event 5f0c8a4e-1b2d-4c3e-9f8a-7b6c5d4e3f21 for ada@example.com failed",
            "event <uuid> for <email> failed",
        ),
        ("first line 12\nsecond line", "first line <n>"),
        ("", ""),
    ],
)
def test_a_failure_message_is_grouped_by_its_pattern(message, pattern):
    assert message_pattern(message) == pattern


def _groups_page(client):
    return client.get(reverse("admin:events_failedevent_groups"))


def test_failure_groups_join_failures_that_differ_only_in_ids(staff_client, client):
    staff_client()
    for seller in (3, 4, 5):
        make_failed(subscriber="seller_notification", exception_message=f"seller {seller} webhook answered 503")
    make_failed(subscriber="seller_notification", exception_message="seller 3 webhook answered 410")
    make_failed(exception_message="seller 3 webhook answered 503")  # another subscriber: another group

    groups = _groups_page(client).context["groups"]

    assert [(g.subscriber, g.message_pattern, g.count) for g in groups] == [
        ("seller_notification", "seller <n> webhook answered <n>", 4),
        ("order_confirmation", "seller <n> webhook answered <n>", 1),
    ]
    members = client.get(reverse("admin:events_failedevent_changelist") + f"?group={groups[0].key}")
    assert members.context["cl"].result_count == 4


def test_replaying_a_group_asks_first_then_replays_and_audits_each_event(staff_client, client, empty_queues):
    user = staff_client("replay_failedevent")
    members = [
        make_failed(subscriber="customer_segmentation", exception_message=f"profile {n} locked") for n in range(3)
    ]
    already_replaying = make_failed(
        subscriber="customer_segmentation", exception_message="profile 9 locked", status=FailedEvent.Status.REPLAYING
    )
    [group] = _groups_page(client).context["groups"]
    url = reverse("admin:events_failedevent_group_action", args=[group.key, "replay"])

    question = client.get(url)
    assert question.status_code == 200
    assert "<strong>4</strong> open failed event(s)" in question.content.decode()
    assert not FailedEventReplay.objects.exists(), "asking changes nothing"

    client.post(url)

    for failed in members:
        failed.refresh_from_db()
        assert failed.status == FailedEvent.Status.REPLAYING
    audit = FailedEventReplay.objects.all()
    assert sorted(entry.failed_event_id for entry in audit) == sorted(f.pk for f in members)
    assert {(entry.via, entry.requested_by, entry.action) for entry in audit} == {("admin-group", user, "replay")}
    assert not already_replaying.replays.exists(), "a replay already under way is not sent twice"
    depths = {s.name: queue_depth(empty_queues, s.queue_name) for s in topology.SUBSCRIBERS}
    assert depths == {**dict.fromkeys(depths, 0), "customer_segmentation": 3}


def test_group_actions_need_the_replay_permission(staff_client, client):
    staff_client()
    make_failed()
    [group] = _groups_page(client).context["groups"]
    for action in ("replay", "archive"):
        url = reverse("admin:events_failedevent_group_action", args=[group.key, action])
        assert client.get(url).status_code == 403
        assert client.post(url).status_code == 403
    assert FailedEvent.objects.get().status == FailedEvent.Status.FAILED


def test_a_large_group_is_archived_with_a_progress_page(staff_client, client, monkeypatch):
    monkeypatch.setattr("marketplace.events.admin.GROUP_PROGRESS_FROM", 2)
    user = staff_client("replay_failedevent")
    for n in range(3):
        make_failed(exception_message=f"order {n} timed out")
    [group] = _groups_page(client).context["groups"]

    response = client.post(reverse("admin:events_failedevent_group_action", args=[group.key, "archive"]))

    assert response.streaming
    page = b"".join(response.streaming_content).decode()
    assert "Archived 3 event(s)" in page
    assert set(FailedEvent.objects.values_list("status", flat=True)) == {FailedEvent.Status.ARCHIVED}
    audit = FailedEventReplay.objects.all()
    assert len(audit) == 3
    assert {(entry.action, entry.requested_by) for entry in audit} == {("archive", user)}


def test_one_downstreams_outage_is_one_group_whether_it_failed_alone_or_with_others(staff_client, client):
    staff_client()
    answer = "seller {n} (Acme) webhook http://10.0.0.7:8080/hooks/{n} answered 503 Service Unavailable"
    for _ in range(2):  # two orders of that one seller
        make_failed(
            subscriber="seller_notification",
            exception="marketplace.events.errors.TransientDownstreamError",
            exception_message=answer.format(n=48),
        )
    # An order of two sellers, both failing: the wrapper names its root cause on its first line.
    wrapper = SellersNotNotifiedTransient(
        "2 of 2 sellers of order #7 not notified: ...", root_cause=TransientDownstreamError(answer.format(n=48))
    )
    assert str(wrapper).splitlines()[0] == root_cause_line(wrapper.root_cause)
    make_failed(
        subscriber="seller_notification",
        exception="notifications.handlers.SellersNotNotifiedTransient",
        exception_message=str(wrapper),
    )
    make_failed(  # another answer of the same downstream is another cause
        subscriber="seller_notification",
        exception="marketplace.events.errors.TransientDownstreamError",
        exception_message="seller 48 (Acme) webhook http://10.0.0.7:8080/hooks/48 answered 429 Too Many Requests",
    )

    groups = _groups_page(client).context["groups"]

    assert [(g.exception_class, g.message_pattern, g.count, g.wrapped_in) for g in groups] == [
        (
            "marketplace.events.errors.TransientDownstreamError",
            "seller <n> (Acme) webhook http://10.0.0.7:8080/<path> answered <n> Service Unavailable",
            3,
            ("notifications.handlers.SellersNotNotifiedTransient",),
        ),
        (
            "marketplace.events.errors.TransientDownstreamError",
            "seller <n> (Acme) webhook http://10.0.0.7:8080/<path> answered <n> Too Many Requests",
            1,
            (),
        ),
    ]


def test_a_failed_events_page_replays_and_archives_it_after_asking(staff_client, client, empty_queues):
    user = staff_client("replay_failedevent")
    failed, other = make_failed(), make_failed()
    page = client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()
    replay_url = reverse("admin:events_failedevent_action", args=[failed.pk, "replay"])
    assert replay_url in page
    assert reverse("admin:events_failedevent_action", args=[failed.pk, "archive"]) in page

    assert "Yes, replay it" in client.get(replay_url).content.decode()
    assert not FailedEventReplay.objects.exists(), "asking changes nothing"
    trace_url = reverse("admin:events_trace_event", args=[failed.event_id])
    response = client.post(replay_url, {"next": trace_url})

    assert response.status_code == 302
    assert response.url == trace_url
    failed.refresh_from_db()
    assert failed.status == FailedEvent.Status.REPLAYING
    assert [(r.action, r.via, r.requested_by) for r in failed.replays.all()] == [("replay", "admin", user)]
    assert queue_depth(empty_queues, topology.subscriber_named("order_confirmation").queue_name) == 1
    # Under way: no second replay is offered.
    page = client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()
    assert replay_url not in page

    response = client.post(
        reverse("admin:events_failedevent_action", args=[other.pk, "archive"]), {"next": "https://evil.example/"}
    )
    assert response.url == reverse("admin:events_failedevent_change", args=[other.pk]), "only a local next"
    other.refresh_from_db()
    assert other.status == FailedEvent.Status.ARCHIVED


def test_a_failed_events_actions_need_the_replay_permission(staff_client, client):
    staff_client()
    failed = make_failed()
    page = client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()
    for action in ("replay", "archive"):
        url = reverse("admin:events_failedevent_action", args=[failed.pk, action])
        assert url not in page
        assert client.get(url).status_code == 403
        assert client.post(url).status_code == 403
    assert FailedEvent.objects.get().status == FailedEvent.Status.FAILED


def test_a_groups_page_follows_its_replay_until_done(staff_client, client, empty_queues):
    staff_client("replay_failedevent")
    members = [make_failed(exception_message=f"provider {n} down") for n in range(2)]
    [group] = _groups_page(client).context["groups"]

    response = client.post(reverse("admin:events_failedevent_group_action", args=[group.key, "replay"]))

    assert response.url.startswith(reverse("admin:events_failedevent_group", args=[group.key]) + "?since=")
    page = client.get(response.url)
    assert "replaying: 0 of 2 done (0 succeeded)" in page.content.decode()
    progress_url = page.context["progress_url"]
    [listed] = _groups_page(client).context["rows"]
    assert (listed[0].replaying, listed[0].replayable, str(listed[1])) == (
        2,
        False,
        "replaying: 0 of 2 done (0 succeeded)",
    )

    FailedEvent.objects.filter(pk=members[0].pk).update(status=FailedEvent.Status.RESOLVED)
    replay_finished(failed_event_id=members[0].pk, succeeded=True)
    FailedEvent.objects.filter(pk=members[1].pk).update(status=FailedEvent.Status.FAILED)
    replay_finished(failed_event_id=members[1].pk, succeeded=False)

    state = client.get(progress_url).json()
    assert state["progress"] == "replayed: 2 of 2 done (1 succeeded, 1 failed again)"
    assert (state["done"], state["open"], state["replayable"]) == (True, 1, True)
    assert state["counts"] == {"failed": 1, "replaying": 0, "resolved": 1, "archived": 0}


def test_the_audit_shows_times_as_every_other_page_does(staff_client, client):
    staff_client("replay_failedevent")
    failed = make_failed()
    FailedEventReplay.objects.create(failed_event=failed, via="admin")

    page = client.get(reverse("admin:events_failedevent_change", args=[failed.pk])).content.decode()

    assert f"{timezone.localtime():%Y-%m-%d} " in page.split("replays and archives (audit)")[-1]
    assert " a.m." not in page
    assert " p.m." not in page
