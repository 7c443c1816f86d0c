from decimal import Decimal

from django.conf import settings
from django.db import models


class CustomerProfile(models.Model):
    class Segment(models.TextChoices):
        NEW = "new", "New"
        RETURNING = "returning", "Returning"
        LOYAL = "loyal", "Loyal"
        HIGH_VALUE = "high_value", "High value"

    buyer = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="customer_profile")
    order_count = models.PositiveIntegerField(default=0)
    lifetime_spend = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0.00"))
    average_order_value = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    first_order_at = models.DateTimeField(null=True, blank=True)
    last_order_at = models.DateTimeField(null=True, blank=True)
    segment = models.CharField(max_length=20, choices=Segment.choices, default=Segment.NEW, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(lifetime_spend__gte=0), name="lifetime_spend_not_negative"),
        ]

    def __str__(self):
        return f"{self.buyer} ({self.segment})"


class CustomerOrder(models.Model):
    """One order as the buyer's profile knows it: whether it is counted in the profile and whether it
    was cancelled. Events may arrive late, out of order and more than once; this row makes the
    outcome independent of that (segmentation/handlers.py):

    - order.placed counts the order unless its row says it is counted or cancelled already;
    - order.cancelled takes a counted order out exactly once; one not seen yet gets a row that is
      cancelled and not counted, so a later order.placed counts nothing.
    """

    profile = models.ForeignKey(CustomerProfile, on_delete=models.CASCADE, related_name="orders")
    order_id = models.BigIntegerField()
    total = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    placed_at = models.DateTimeField(null=True, blank=True)
    counted = models.BooleanField(default=False, help_text="Included in the profile's count and spend.")
    cancelled_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["profile", "order_id"], name="one_customer_order_per_profile_order"),
            models.CheckConstraint(
                condition=~(models.Q(counted=True) & models.Q(cancelled_at__isnull=False)),
                name="a_cancelled_order_is_not_counted",
            ),
        ]

    def __str__(self):
        state = "cancelled" if self.cancelled else "counted" if self.counted else "not counted"
        return f"order {self.order_id} ({state})"

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None
