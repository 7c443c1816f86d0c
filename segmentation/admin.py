from django.contrib import admin

from segmentation.models import CustomerProfile


@admin.register(CustomerProfile)
class CustomerProfileAdmin(admin.ModelAdmin):
    list_display = ["buyer", "segment", "order_count", "lifetime_spend", "average_order_value", "last_order_at"]
    list_filter = ["segment"]
    search_fields = ["buyer__email"]
    readonly_fields = [f.name for f in CustomerProfile._meta.fields]
