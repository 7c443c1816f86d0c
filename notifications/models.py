from django.db import models


class Notification(models.Model):
    """A notification that was sent; unique per (event, kind, recipient) so it is sent once."""

    class Kind(models.TextChoices):
        ORDER_CONFIRMATION = "order_confirmation", "Order confirmation (buyer)"
        SELLER_ORDER = "seller_order", "New order (seller)"
        ORDER_CANCELLATION = "order_cancellation", "Order cancellation (buyer)"
        SELLER_ORDER_CANCELLED = "seller_order_cancelled", "Order cancelled (seller)"

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook"

    event_id = models.UUIDField()
    kind = models.CharField(max_length=30, choices=Kind.choices)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    recipient = models.CharField(max_length=300, help_text="Email address or webhook URL.")
    order_id = models.BigIntegerField(db_index=True)
    seller_id = models.BigIntegerField(null=True, blank=True)
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["event_id", "kind", "seller_id"],
                name="one_notification_per_event_kind_seller",
                nulls_distinct=False,
            ),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} for order {self.order_id} to {self.recipient}"
