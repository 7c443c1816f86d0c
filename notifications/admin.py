from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "channel", "recipient", "order_id", "trace", "sent_at"]
    list_filter = ["kind", "channel", "sent_at"]
    search_fields = ["=order_id", "=event_id", "recipient"]
    readonly_fields = [*(f.name for f in Notification._meta.fields), "trace"]

    @admin.display(description="event")
    def trace(self, obj):
        url = reverse("admin:events_trace_event", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    def has_add_permission(self, request):
        return False
