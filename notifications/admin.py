from django.contrib import admin

from marketplace.events.trace import trace_link
from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "channel", "recipient", "order_id", "trace", "sent_at"]
    list_filter = ["kind", "channel", "sent_at"]
    search_fields = ["=order_id", "=event_id", "recipient"]
    readonly_fields = [*(f.name for f in Notification._meta.fields), "trace"]

    @admin.display(description="event")
    def trace(self, obj):
        return trace_link(obj.event_id)

    def has_add_permission(self, request):
        return False
