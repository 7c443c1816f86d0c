from django.contrib import admin

from orders.models import Order, OrderLine, Product, Seller


@admin.register(Seller)
class SellerAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "email", "webhook_url"]
    search_fields = ["name", "email"]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["id", "sku", "name", "seller", "price", "stock", "is_active"]
    list_editable = ["stock", "is_active"]
    list_filter = ["seller", "is_active"]
    search_fields = ["sku", "name"]
    list_select_related = ["seller"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    can_delete = False
    fields = ["product", "sku", "name", "seller", "quantity", "unit_price", "line_total"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "buyer", "status", "total", "currency", "created_at"]
    list_filter = ["status", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["=id", "buyer__email"]
    # An order changes state only through the API and its events (stock, profile and subscribers
    # all follow from them); an edit here would change none of that.
    readonly_fields = ["buyer", "status", "total", "currency", "created_at"]
    list_select_related = ["buyer"]
    inlines = [OrderLineInline]

    def has_add_permission(self, request):
        return False  # orders are placed through the API, which takes the stock and publishes the event

    def has_delete_permission(self, request, obj=None):
        # Deleting would leave the stock taken, the buyer's profile counting it, no event, and its
        # idempotency key gone (so a retried request would place the order twice).
        return False
