from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from notifications.webhooks import spec_secret
from orders import services
from orders.models import Order, OrderLine, Product, Seller


@admin.register(Seller)
class SellerAdmin(admin.ModelAdmin):
    """The webhook URL is validated on save (model validators: https, public addresses only)."""

    list_display = ["id", "name", "email", "webhook_url"]
    search_fields = ["name", "email"]
    readonly_fields = ["receiver_secrets"]
    actions = ["finish_secret_rotation"]

    @admin.display(description="secrets as the seller's receiver uses them (Standard Webhooks)")
    def receiver_secrets(self, obj):
        secrets = [secret for secret in (obj.webhook_secret, obj.webhook_secret_next) if secret]
        return ", ".join(spec_secret(secret) for secret in secrets) or "-"

    @admin.action(description="Finish webhook secret rotation (the next secret becomes the secret)")
    def finish_secret_rotation(self, request, queryset):
        rotated = 0
        for seller in queryset.exclude(webhook_secret_next=""):
            seller.webhook_secret, seller.webhook_secret_next = seller.webhook_secret_next, ""
            seller.save(update_fields=["webhook_secret", "webhook_secret_next"])
            rotated += 1
        self.message_user(request, f"Rotated the webhook secret of {rotated} seller(s).", messages.SUCCESS)


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
    # An order changes state only through its services (the API, or the Cancel action here), which
    # move the stock and publish the event that profile and subscribers follow; an edit here would
    # change none of that.
    readonly_fields = ["buyer_link", "status", "total", "currency", "created_at", "cancelled_at", "events"]
    exclude = ["buyer"]
    list_select_related = ["buyer"]
    inlines = [OrderLineInline]
    actions = ["cancel_orders"]

    def has_cancel_permission(self, request):
        return request.user.has_perm("orders.cancel_order")

    @admin.action(description="Cancel selected orders", permissions=["cancel"])
    def cancel_orders(self, request, queryset):
        """One order_cancel (and so one transaction) per order: one that cannot be cancelled keeps
        none of the others from it, and each is reported."""
        cancelled, already_cancelled, not_cancellable = [], [], []
        for order_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                outcome = services.order_cancel(
                    order_id=order_id, cancelled_by="staff", correlation_id=request.request_id
                )
            except services.OrderNotCancellable as exc:
                not_cancellable.append(f"#{order_id} ({exc.extensions['order_status']})")
                continue
            (already_cancelled if outcome.already_cancelled else cancelled).append(f"#{order_id}")
        if cancelled:
            self.message_user(request, f"Cancelled, stock restored: order {', '.join(cancelled)}.", messages.SUCCESS)
        if already_cancelled:
            self.message_user(
                request, f"Already cancelled, left as they were: order {', '.join(already_cancelled)}.", messages.INFO
            )
        if not_cancellable:
            self.message_user(
                request,
                f"Not cancellable, only a placed order is: order {', '.join(not_cancellable)}.",
                messages.WARNING,
            )

    @admin.display(description="buyer")
    def buyer_link(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("admin:auth_user_change", args=[obj.buyer_id]), obj.buyer)

    @admin.display(description="events")
    def events(self, obj):
        url = reverse("admin:events_trace_order", args=[obj.pk])
        return format_html('<a href="{}">its events, and where each subscriber is with them</a>', url)

    def has_add_permission(self, request):
        return False  # orders are placed through the API, which takes the stock and publishes the event

    def has_delete_permission(self, request, obj=None):
        # Deleting would leave the stock taken, the buyer's profile counting it, no event, and its
        # idempotency key gone (so a retried request would place the order twice).
        return False
