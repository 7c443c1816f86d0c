from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from notifications.webhooks import validate_seller_webhook_url, validate_webhook_secret


class Seller(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField()
    # When set, order notifications are POSTed here (signed) instead of emailed: an https URL on a
    # public address (notifications/webhooks.py, checked again at every delivery).
    webhook_url = models.URLField(blank=True, validators=[validate_seller_webhook_url])
    # Signing secrets (Standard Webhooks, docs/events.md): whsec_<base64 key>, or a plain string whose
    # UTF-8 bytes are the key. While a secret is rotated, deliveries are signed with both.
    webhook_secret = models.CharField(max_length=200, blank=True, validators=[validate_webhook_secret])
    webhook_secret_next = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_webhook_secret],
        help_text="During a rotation, the seller's new secret: deliveries carry a signature with each "
        "secret. Once the seller verifies with it, make it the secret and empty this field.",
    )

    def __str__(self):
        return self.name


class Product(models.Model):
    seller = models.ForeignKey(Seller, on_delete=models.PROTECT, related_name="products")
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    stock = models.IntegerField(default=0)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # The last line of defence: place_order never lets stock go below zero.
            models.CheckConstraint(condition=Q(stock__gte=0), name="product_stock_not_negative"),
            models.CheckConstraint(condition=Q(price__gte=0), name="product_price_not_negative"),
        ]

    def __str__(self):
        return f"{self.sku} {self.name}"


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "placed", "Placed"
        CANCELLED = "cancelled", "Cancelled"

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLACED, db_index=True)
    total = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["buyer", "-created_at"], name="order_buyer_recent_idx")]
        constraints = [
            # order_cancel sets both at once; the order.cancelled event carries cancelled_at.
            models.CheckConstraint(
                condition=~Q(status="cancelled") | Q(cancelled_at__isnull=False),
                name="cancelled_order_has_cancelled_at",
            ),
        ]
        # Staff cancel orders with an admin action (it restores stock and publishes order.cancelled),
        # a right of its own: "change" does not grant it, and nothing else in the admin changes an order.
        permissions = [("cancel_order", "Can cancel orders")]

    def __str__(self):
        return f"Order #{self.pk}"


class OrderLine(models.Model):
    """A line as it was sold: name, sku, seller and price are copied from the product at that moment."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    seller = models.ForeignKey(Seller, on_delete=models.PROTECT, related_name="+")
    sku = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    line_total = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "product"], name="one_line_per_product"),
            models.CheckConstraint(condition=Q(quantity__gte=1), name="line_quantity_positive"),
        ]

    def __str__(self):
        return f"{self.quantity} x {self.sku}"


class IdempotencyKey(models.Model):
    """Remembers which order a buyer's Idempotency-Key created, and for which request body."""

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["buyer", "key"], name="idempotency_key_per_buyer")]

    def __str__(self):
        return self.key
