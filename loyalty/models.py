from django.db import models


class RewardCode(models.Model):
    """A one-time reward code for a buyer who reached a rewarded segment: one per (buyer, segment),
    emailed once (loyalty/handlers.py)."""

    class Segment(models.TextChoices):
        LOYAL = "loyal", "Loyal"
        HIGH_VALUE = "high_value", "High value"

    # The buyer's id as customer.segment_changed carries it: this app reads events, not the user table.
    buyer_id = models.BigIntegerField()
    segment = models.CharField(max_length=20, choices=Segment.choices)
    code = models.CharField(max_length=32, unique=True)
    event_id = models.UUIDField(db_index=True, help_text="The customer.segment_changed event that earned it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["buyer_id", "segment"], name="one_reward_code_per_buyer_segment"),
        ]

    def __str__(self):
        return f"{self.code} ({self.get_segment_display()}, buyer {self.buyer_id})"
