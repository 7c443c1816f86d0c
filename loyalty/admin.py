from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from loyalty.models import RewardCode
from marketplace.events.trace import trace_link


@admin.register(RewardCode)
class RewardCodeAdmin(admin.ModelAdmin):
    """Read-only: a code is created by its event and emailed once; editing or deleting it here
    would break the one code per (buyer, segment) the buyer was told about."""

    list_display = ["code", "segment", "buyer", "trace", "created_at"]
    list_filter = ["segment", "created_at"]
    search_fields = ["=code", "=buyer_id", "=event_id"]
    date_hierarchy = "created_at"
    fields = ["code", "segment", "buyer", "trace", "created_at"]
    readonly_fields = fields

    @admin.display(description="buyer", ordering="buyer_id")
    def buyer(self, obj):
        try:
            url = reverse("admin:auth_user_change", args=[obj.buyer_id])
        except NoReverseMatch:
            return obj.buyer_id
        return format_html('<a href="{}">{}</a>', url, obj.buyer_id)

    @admin.display(description="event")
    def trace(self, obj):
        return trace_link(obj.event_id)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
