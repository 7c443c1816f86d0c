import json

from django.contrib import admin, messages
from django.db.models import Count
from django.utils import timezone
from django.utils.html import format_html

from marketplace.events.models import FailedEvent, FailedEventReplay, OutboxEvent
from marketplace.events.services import NotReplayable, failed_event_archive, failed_event_replay


class PublishedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("pending", "Pending"), ("published", "Published")]

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.filter(published_at__isnull=True)
        if self.value() == "published":
            return queryset.filter(published_at__isnull=False)
        return queryset


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ["id", "event_type", "event_id", "state", "age", "attempts", "last_error_short", "created_at"]
    list_filter = [PublishedFilter, "event_type", "created_at"]
    search_fields = ["=event_id"]
    readonly_fields = [
        "event_id",
        "event_type",
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
    def state(self, obj):
        return "published" if obj.is_published else "pending"

    @admin.display(description="age")
    def age(self, obj):
        end = obj.published_at or timezone.now()
        return f"{(end - obj.created_at).total_seconds():.1f}s"

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return obj.last_error[:80]

    @admin.display(description="envelope")
    def pretty_envelope(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.envelope, indent=2))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # an unpublished row is an event not yet delivered


class FailedEventReplayInline(admin.TabularInline):
    model = FailedEventReplay
    extra = 0
    can_delete = False
    readonly_fields = ["requested_by", "requested_at", "via"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(FailedEvent)
class FailedEventAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "subscriber",
        "event_type",
        "event_id",
        "status",
        "exception_class",
        "attempts",
        "first_failed_at",
        "last_failed_at",
    ]
    list_filter = ["subscriber", "status", "exception_class", "last_failed_at"]
    search_fields = ["=event_id", "exception_message"]
    date_hierarchy = "last_failed_at"
    actions = ["replay", "archive"]
    readonly_fields = [
        "subscriber",
        "event_id",
        "event_type",
        "status",
        "exception_class",
        "exception_message",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "resolved_at",
        "in_dead_letter_queue",
        "dead_lettered_by",
        "pretty_payload",
        "pretty_traceback",
        "raw_body",
        "content_type",
        "body_size",
        "pretty_headers",
    ]
    exclude = ["payload", "traceback", "body", "headers", "body_digest", "dead_letter_key"]
    inlines = [FailedEventReplayInline]

    @admin.display(description="payload")
    def pretty_payload(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2))

    @admin.display(description="traceback")
    def pretty_traceback(self, obj):
        return format_html("<pre>{}</pre>", obj.traceback)

    @admin.display(description="message headers")
    def pretty_headers(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.headers, indent=2, sort_keys=True))

    @admin.display(description="dead-lettered by")
    def dead_lettered_by(self, obj):
        reason = (obj.headers or {}).get("x-first-death-reason")
        if reason:
            return f"RabbitMQ ({reason}) from {(obj.headers or {}).get('x-first-death-queue', '?')}"
        return "the subscriber, after its last attempt" if obj.headers else ""

    def changelist_view(self, request, extra_context=None):
        summary = (
            FailedEvent.objects.filter(status__in=[FailedEvent.Status.FAILED, FailedEvent.Status.REPLAYING])
            .values("subscriber", "exception_class")
            .annotate(count=Count("id"))
            .order_by("subscriber", "-count")
        )
        return super().changelist_view(request, {**(extra_context or {}), "failure_summary": list(summary)})

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the audit trail of a failure stays; Archive stops tracking it

    def has_replay_permission(self, request):
        return request.user.has_perm("events.replay_failedevent")

    def has_archive_permission(self, request):
        return request.user.has_perm("events.replay_failedevent")

    @admin.action(description="Replay to their subscriber", permissions=["replay"])
    def replay(self, request, queryset):
        replayed, skipped = 0, []
        for failed_event in queryset:
            try:
                failed_event_replay(failed_event=failed_event, requested_by=request.user, via="admin")
                replayed += 1
            except NotReplayable as exc:
                skipped.append(str(exc))
        self.message_user(request, f"Replayed {replayed} event(s).", messages.SUCCESS)
        for reason in skipped:
            self.message_user(request, f"Skipped: {reason}", messages.WARNING)

    @admin.action(description="Archive (stop tracking)", permissions=["archive"])
    def archive(self, request, queryset):
        for failed_event in queryset:
            failed_event_archive(failed_event=failed_event)
        self.message_user(request, f"Archived {queryset.count()} event(s).", messages.SUCCESS)
