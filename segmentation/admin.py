from django.contrib import admin

from segmentation.models import CustomerOrder, CustomerProfile


class CustomerOrderInline(admin.TabularInline):
    model = CustomerOrder
    fields = ["order_id", "total", "placed_at", "counted", "cancelled_at", "updated_at"]
    readonly_fields = fields
    ordering = ["-order_id"]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(CustomerProfile)
class CustomerProfileAdmin(admin.ModelAdmin):
    list_display = ["buyer", "segment", "order_count", "lifetime_spend", "average_order_value", "last_order_at"]
    list_filter = ["segment"]
    search_fields = ["buyer__email"]
    readonly_fields = [f.name for f in CustomerProfile._meta.fields]
    inlines = [CustomerOrderInline]
