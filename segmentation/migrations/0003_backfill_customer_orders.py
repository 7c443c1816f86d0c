"""Give the orders that profiles counted before CustomerOrder existed their rows, so that cancelling
one of them takes it out of its profile.

The source is what the event bus still retains: every order.placed event in the outbox that this
subscriber processed (its ProcessedEvent marker). Older orders (past OUTBOX_RETENTION_DAYS) stay
without a row; cancelling one of those leaves its profile as it is (handlers.remove_cancelled_order).
"""

from datetime import datetime
from decimal import Decimal

from django.db import migrations

BATCH = 1000


def backfill(apps, schema_editor):
    OutboxEvent = apps.get_model("events", "OutboxEvent")
    ProcessedEvent = apps.get_model("events", "ProcessedEvent")
    CustomerProfile = apps.get_model("segmentation", "CustomerProfile")
    CustomerOrder = apps.get_model("segmentation", "CustomerOrder")

    profiles = dict(CustomerProfile.objects.values_list("buyer_id", "id"))
    if not profiles:
        return
    counted = ProcessedEvent.objects.filter(subscriber="customer_segmentation").values("event_id")
    envelopes = (
        OutboxEvent.objects.filter(event_type="order.placed", event_id__in=counted)
        .order_by("id")
        .values_list("envelope", flat=True)
    )
    rows = []
    for envelope in envelopes.iterator(chunk_size=BATCH):
        order = envelope["data"]
        profile_id = profiles.get(order["buyer"]["id"])
        if profile_id is None:
            continue
        rows.append(
            CustomerOrder(
                profile_id=profile_id,
                order_id=order["order_id"],
                total=Decimal(order["total"]),
                placed_at=datetime.fromisoformat(order["placed_at"]),
                counted=True,
            )
        )
        if len(rows) >= BATCH:
            CustomerOrder.objects.bulk_create(rows, ignore_conflicts=True)
            rows = []
    CustomerOrder.objects.bulk_create(rows, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [
        ("segmentation", "0002_customer_order"),
        ("events", "0003_failure_groups_and_delivery_history"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
