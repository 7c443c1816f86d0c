from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.auth.models import User  # admin views see only signed-in staff: request.user is one
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import escape, format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.timesince import timesince

from marketplace.events import trace
from marketplace.events.failure_groups import (
    failure_group,
    group_replay_progress,
    group_status_counts,
    open_failure_groups,
    root_cause,
)
from marketplace.events.models import DeliveryAttempt, FailedEvent, FailedEventReplay, OutboxEvent
from marketplace.events.services import (
    GroupOutcome,
    NotReplayable,
    failed_event_archive,
    failed_event_replay,
    failure_group_apply,
    failure_group_steps,
)

# A group larger than this is replayed or archived with a streamed progress page.
GROUP_PROGRESS_FROM = 200


def moment(value: datetime | None) -> str:
    """To the second, with how long ago: '2026-11-29 04:12:33 UTC (3 minutes ago)'."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({timesince(value)} ago)"


class PublishedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("pending", "Pending"), ("published", "Published")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> QuerySet[OutboxEvent]:
        if self.value() == "pending":
            return queryset.filter(published_at__isnull=True)
        if self.value() == "published":
            return queryset.filter(published_at__isnull=False)
        return queryset


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at runtime (no django_stubs_ext.monkeypatch)
    list_display = ["id", "event_type", "event_id", "state", "age", "attempts", "last_error_short", "created_at"]
    list_filter = [PublishedFilter, "event_type", "created_at"]
    search_fields = ["=event_id"]
    readonly_fields = [
        "event_id",
        "event_type",
        "trace_link",
        "pretty_envelope",
        "created_at",
        "claimed_until",
        "published_at",
        "attempts",
        "last_attempt_at",
        "last_error",
    ]
    exclude = ["envelope"]

    @admin.display(description="state")
    def state(self, obj: OutboxEvent) -> str:
        return "published" if obj.is_published else "pending"

    @admin.display(description="age")
    def age(self, obj: OutboxEvent) -> str:
        end = obj.published_at or timezone.now()
        return f"{(end - obj.created_at).total_seconds():.1f}s"

    @admin.display(description="last error")
    def last_error_short(self, obj: OutboxEvent) -> str:
        return obj.last_error[:80]

    @admin.display(description="envelope")
    def pretty_envelope(self, obj: OutboxEvent) -> str:
        return format_html('<pre class="wrapped">{}</pre>', json.dumps(obj.envelope, indent=2))

    @admin.display(description="trace")
    def trace_link(self, obj: OutboxEvent) -> str:
        return trace.trace_link(obj.event_id, "where this event is, with each subscriber")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("trace/order/<int:order_id>/", view(self.order_trace_view), name="events_trace_order"),
            path("trace/event/<uuid:event_id>/", view(self.event_trace_view), name="events_trace_event"),
            *super().get_urls(),
        ]

    def order_trace_view(self, request: HttpRequest, order_id: int) -> TemplateResponse:
        return self._trace(request, f"Order #{order_id}: its events", trace.order_event_traces(order_id))

    def event_trace_view(self, request: HttpRequest, event_id: uuid.UUID) -> TemplateResponse:
        event = get_object_or_404(OutboxEvent, event_id=event_id)
        return self._trace(request, f"Event {event.event_type} {event.event_id}", [trace.event_trace(event)])

    def _trace(self, request: HttpRequest, title: str, traces: list[trace.EventTrace]) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "traces": traces,
            "opts": self.model._meta,
            "can_replay": request.user.has_perm("events.replay_failedevent"),
            "here": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/events/trace.html", context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OutboxEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: OutboxEvent | None = None) -> bool:
        return False  # an unpublished row is an event not yet delivered


class FailedEventReplayInline(admin.TabularInline):  # type: ignore[type-arg]  # not subscriptable at runtime (no django_stubs_ext.monkeypatch)
    model = FailedEventReplay
    extra = 0
    can_delete = False
    verbose_name = "replay or archive"
    verbose_name_plural = "replays and archives (audit)"
    fields = readonly_fields = ["action", "via", "requested_by", "requested", "outcome", "finished"]  # type: ignore[assignment]  # valid for both; mypy infers list[str] against fields' invariant list

    def has_add_permission(self, request: HttpRequest, obj: FailedEvent | None = None) -> bool:
        return False

    @admin.display(description="requested at")
    def requested(self, obj: FailedEventReplay) -> str:
        return moment(obj.requested_at)

    @admin.display(description="finished at")
    def finished(self, obj: FailedEventReplay) -> str:
        return moment(obj.finished_at)


class FailureGroupFilter(admin.SimpleListFilter):
    title = "failure group"
    parameter_name = "group"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [
            (group.key, f"{group.subscriber} · {group.exception_class.rpartition('.')[2]} · "
             f"{group.message_pattern[:60]} ({group.count})")
            for group in open_failure_groups()[:30]
        ]  # fmt: skip

    def queryset(self, request: HttpRequest, queryset: QuerySet[FailedEvent]) -> QuerySet[FailedEvent]:
        return queryset.filter(group_key=self.value()) if self.value() else queryset


@admin.register(FailedEvent)
class FailedEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at runtime (no django_stubs_ext.monkeypatch)
    list_display = ["id", "subscriber", "failure", "status", "attempts", "last_failed", "trace"]
    list_display_links = ["id", "failure"]
    list_filter = [FailureGroupFilter, "subscriber", "status", "exception_class", "last_failed_at"]
    search_fields = ["=event_id", "exception_message"]
    date_hierarchy = "last_failed_at"
    actions = ["replay", "archive"]
    readonly_fields = [
        "subscriber",
        "event_id",
        "event_type",
        "status",
        "trace",
        "group",
        "exception_class",
        "exception_message",
        "attempts",
        "first_failed",
        "last_failed",
        "resolved_at",
        "in_dead_letter_queue",
        "dead_lettered_by",
        "delivery_history",
        "pretty_payload",
        "pretty_traceback",
        "raw_body",
        "content_type",
        "body_size",
        "pretty_headers",
    ]
    exclude = [
        "payload", "traceback", "body", "headers", "body_digest", "dead_letter_key", "first_failed_at",
        "last_failed_at", "message_pattern", "group_key",
    ]  # fmt: skip
    inlines = [FailedEventReplayInline]

    @admin.display(description="failure", ordering="exception_class")
    def failure(self, obj: FailedEvent) -> str:
        return format_html(
            '<span class="failure"><strong>{}</strong><br>{}</span>',
            obj.exception_class.rpartition(".")[2],
            obj.exception_message[:200],
        )

    @admin.display(description="last failed", ordering="last_failed_at")
    def last_failed(self, obj: FailedEvent) -> str:
        return moment(obj.last_failed_at)

    @admin.display(description="first failed", ordering="first_failed_at")
    def first_failed(self, obj: FailedEvent) -> str:
        return moment(obj.first_failed_at)

    def get_queryset(self, request: HttpRequest) -> QuerySet[FailedEvent]:
        # Whether the event is still in the outbox (retention may have pruned it): one subquery for
        # the whole page instead of a query per row.
        in_outbox = OutboxEvent.objects.filter(event_id=OuterRef("event_id"))
        queryset: QuerySet[FailedEvent] = super().get_queryset(request).annotate(traceable=Exists(in_outbox))
        return queryset

    @admin.display(description="trace")
    def trace(self, obj: FailedEvent) -> str:
        return trace.trace_link(obj.event_id, "trace") if obj.traceable else "-"  # type: ignore[attr-defined,arg-type]  # get_queryset's annotation; only an event with an id is in the outbox

    @admin.display(description="failure group")
    def group(self, obj: FailedEvent) -> str:
        url = reverse("admin:events_failedevent_group", args=[obj.group_key])
        cause_class, _ = root_cause(exception_class=obj.exception_class, exception_message=obj.exception_message)
        return format_html('<a href="{}">{} · {} · {}</a>', url, obj.subscriber, cause_class, obj.message_pattern)

    @admin.display(description="delivery history")
    def delivery_history(self, obj: FailedEvent) -> str:
        if obj.event_id is None:
            return "-"
        attempts = trace.numbered(DeliveryAttempt.objects.filter(subscriber=obj.subscriber, event_id=obj.event_id))
        if not attempts:
            return "no attempts recorded"
        rows = format_html_join(
            "",
            "<tr class='delivery-attempt'><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td>"
            "<td class='wrapped'>{}</td></tr>",
            (
                (
                    a.label,
                    moment_ms(a.attempt.started_at),
                    f"{a.attempt.duration_ms:.1f}",
                    a.attempt.worker,
                    a.attempt.get_outcome_display(),
                    a.attempt.error,
                )
                for a in attempts
            ),
        )
        return format_html(
            "<table><thead><tr><th>#</th><th>started</th><th>took</th><th>worker</th><th>outcome</th>"
            "<th>error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="payload")
    def pretty_payload(self, obj: FailedEvent) -> str:
        return format_html('<pre class="wrapped">{}</pre>', json.dumps(obj.payload, indent=2))

    @admin.display(description="traceback")
    def pretty_traceback(self, obj: FailedEvent) -> str:
        return format_html('<pre class="wrapped">{}</pre>', obj.traceback)

    @admin.display(description="message headers")
    def pretty_headers(self, obj: FailedEvent) -> str:
        return format_html('<pre class="wrapped">{}</pre>', json.dumps(obj.headers, indent=2, sort_keys=True))

    @admin.display(description="dead-lettered by")
    def dead_lettered_by(self, obj: FailedEvent) -> str:
        reason = (obj.headers or {}).get("x-first-death-reason")
        if reason:
            return f"RabbitMQ ({reason}) from {(obj.headers or {}).get('x-first-death-queue', '?')}"
        return "the subscriber, after its last attempt" if obj.headers else ""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = {**(extra_context or {}), "failure_groups": open_failure_groups()[:10]}
        return super().changelist_view(request, context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        failed_event = self.get_object(request, object_id)
        context = {**(extra_context or {})}
        if failed_event is not None and self.has_replay_permission(request):
            context |= {
                "can_replay": failed_event.status == FailedEvent.Status.FAILED,
                "can_archive": failed_event.status in FailedEvent.OPEN,
            }
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("groups/", view(self.groups_view), name="events_failedevent_groups"),
            path("groups/<str:key>/", view(self.group_view), name="events_failedevent_group"),
            path(
                "groups/<str:key>/progress/",
                view(self.group_progress_view),
                name="events_failedevent_group_progress",
            ),
            path(
                "groups/<str:key>/<str:action>/", view(self.group_action_view), name="events_failedevent_group_action"
            ),
            path("<int:pk>/do/<str:action>/", view(self.event_action_view), name="events_failedevent_action"),
            *super().get_urls(),
        ]

    def event_action_view(self, request: HttpRequest, pk: int, action: str) -> HttpResponse:
        """Replay or archive one failed event: asks first (GET), acts on POST, audited as the
        list's actions are; then back to ``next`` (the trace it was asked from) or the event."""
        if action not in ("replay", "archive"):
            raise Http404
        if not self.has_replay_permission(request):
            raise PermissionDenied
        failed_event = get_object_or_404(FailedEvent, pk=pk)
        back = request.POST.get("next") or request.GET.get("next") or ""
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
            back = reverse("admin:events_failedevent_change", args=[pk])
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{action.capitalize()} failed event #{pk}",
                "opts": self.model._meta,
                "failed_event": failed_event,
                "action": action,
                "next": back,
            }
            return TemplateResponse(request, "admin/events/failedevent/event_confirm.html", context)
        try:
            if action == "replay":
                failed_event_replay(failed_event=failed_event, requested_by=cast(User, request.user), via="admin")
                self.message_user(request, f"Replayed failed event #{pk} to {failed_event.subscriber}.")
            else:
                if failed_event.status not in FailedEvent.OPEN:
                    raise NotReplayable(f"failed event {pk} is {failed_event.status}")
                failed_event_archive(failed_event=failed_event, requested_by=cast(User, request.user), via="admin")
                self.message_user(request, f"Archived failed event #{pk}.")
        except NotReplayable as exc:
            self.message_user(request, f"Skipped: {exc}", messages.WARNING)
        return HttpResponseRedirect(back)

    def group_view(self, request: HttpRequest, key: str) -> TemplateResponse:
        """One failure group, closed members included: its root cause, each status's count, and
        the progress of its replays (kept up to date by events/replay_progress.js)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        counts = group_status_counts(key)
        sample = FailedEvent.objects.filter(group_key=key).order_by("-last_failed_at").first()
        if sample is None:
            raise Http404("no such failure group")
        cause_class, _ = root_cause(exception_class=sample.exception_class, exception_message=sample.exception_message)
        since = parse_datetime(request.GET.get("since", "").replace(" ", "+"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Failure group",
            "opts": self.model._meta,
            "key": key,
            "sample": sample,
            "cause_class": cause_class,
            "counts": counts,
            "group": failure_group(key),
            "progress": group_replay_progress(key=key, since=since),
            "progress_url": reverse("admin:events_failedevent_group_progress", args=[key])
            + (f"?{urlencode({'since': since.isoformat()})}" if since else ""),
            "members_url": reverse("admin:events_failedevent_changelist") + f"?group={key}",
            "can_act": self.has_replay_permission(request),
        }
        return TemplateResponse(request, "admin/events/failedevent/group.html", context)

    def group_progress_view(self, request: HttpRequest, key: str) -> JsonResponse:
        """The group page's state as JSON, polled while a replay is under way."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        since = parse_datetime(request.GET.get("since", "").replace(" ", "+"))
        progress = group_replay_progress(key=key, since=since)
        counts = group_status_counts(key)
        return JsonResponse(
            {
                "progress": str(progress),
                "requested": progress.requested,
                "finished": progress.finished,
                "done": progress.done,
                "counts": counts,
                "open": counts[FailedEvent.Status.FAILED] + counts[FailedEvent.Status.REPLAYING],
                "replayable": counts[FailedEvent.Status.FAILED] > 0,
            }
        )

    def groups_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        groups = open_failure_groups()
        context = {
            **self.admin_site.each_context(request),
            "title": "Failure groups",
            "opts": self.model._meta,
            "groups": groups,
            # A group with replays under way shows (and follows) their progress.
            "rows": [(group, group_replay_progress(key=group.key) if group.replaying else None) for group in groups],
            "can_act": self.has_replay_permission(request),
        }
        return TemplateResponse(request, "admin/events/failedevent/groups.html", context)

    def group_action_view(self, request: HttpRequest, key: str, action: str) -> HttpResponseBase:
        if action not in ("replay", "archive"):
            raise Http404
        if not self.has_replay_permission(request):
            raise PermissionDenied
        groups_url = reverse("admin:events_failedevent_groups")
        group = failure_group(key)
        if group is None:
            self.message_user(request, "That failure group has no open failures left.", messages.WARNING)
            return HttpResponseRedirect(groups_url)
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{action.capitalize()} a failure group",
                "opts": self.model._meta,
                "group": group,
                "action": action,
            }
            return TemplateResponse(request, "admin/events/failedevent/group_confirm.html", context)
        # The group's page then follows these replays until the subscriber has handled each.
        group_url = reverse("admin:events_failedevent_group", args=[key])
        group_url += f"?{urlencode({'since': timezone.now().isoformat()})}" if action == "replay" else ""
        if group.count < GROUP_PROGRESS_FROM:
            outcome = failure_group_apply(key=key, action=action, requested_by=cast(User, request.user))
            self.message_user(request, _group_summary(action, outcome), messages.SUCCESS)
            return HttpResponseRedirect(group_url)
        return StreamingHttpResponse(_progress_page(key, cast(User, request.user), action, group.count, group_url))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FailedEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: FailedEvent | None = None) -> bool:
        return False  # the audit trail of a failure stays; Archive stops tracking it

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("events.replay_failedevent")

    def has_archive_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("events.replay_failedevent")

    @admin.action(description="Replay to their subscriber", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[FailedEvent]) -> None:
        replayed, skipped = 0, []
        for failed_event in queryset:
            try:
                failed_event_replay(failed_event=failed_event, requested_by=cast(User, request.user), via="admin")
                replayed += 1
            except NotReplayable as exc:
                skipped.append(str(exc))
        self.message_user(request, f"Replayed {replayed} event(s).", messages.SUCCESS)
        for reason in skipped:
            self.message_user(request, f"Skipped: {reason}", messages.WARNING)

    @admin.action(description="Archive (stop tracking)", permissions=["archive"])
    def archive(self, request: HttpRequest, queryset: QuerySet[FailedEvent]) -> None:
        for failed_event in queryset:
            failed_event_archive(failed_event=failed_event, requested_by=cast(User, request.user), via="admin")
        self.message_user(request, f"Archived {queryset.count()} event(s).", messages.SUCCESS)


def moment_ms(value: datetime) -> str:
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d}"


def _group_summary(action: str, outcome: GroupOutcome) -> str:
    verb = "Replayed" if action == "replay" else "Archived"
    skipped = f", skipped {outcome.skipped}" if outcome.skipped else ""
    return f"{verb} {outcome.done} event(s){skipped}; each is audited on its failed event."


def _progress_page(key: str, user: User, action: str, total: int, back_url: str) -> Iterator[str]:
    """A plain page that grows as the group is worked through (a line per 100 events)."""
    title = f"{action.capitalize()} of {total} event(s)"
    yield f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1>"
    outcome = GroupOutcome()
    for outcome in failure_group_steps(key=key, action=action, requested_by=user):
        handled = outcome.done + outcome.skipped
        if handled % 100 == 0:
            yield f"<p>{handled} of {total}…</p>"
    summary = escape(_group_summary(action, outcome))
    link = f"<a href='{escape(back_url)}'>The failure group, as its events are handled</a>"
    yield f"<p><strong>{summary}</strong></p><p>{link}</p>"
