from django.contrib import admin

from api_tokens.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """To see and revoke (delete) tokens. Tokens are issued by `manage.py api_tokens create` or
    POST /api/tokens/, which show them once; the admin has none to show."""

    list_display = ["id", "user", "name", "created", "expiry"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name"]
    fields = ["user", "name", "created", "expiry"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
