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

    def __str__(self):
        return f"{self.buyer} ({self.segment})"
