from django.contrib import admin

from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "channel", "recipient", "order_id", "event_id", "sent_at"]
    list_filter = ["kind", "channel", "sent_at"]
    search_fields = ["=order_id", "=event_id", "recipient"]
    readonly_fields = [f.name for f in Notification._meta.fields]

    def has_add_permission(self, request):
        return False
