"""The events the orders domain publishes. Who consumes them is not this module's business."""

from __future__ import annotations

from typing import Any

from marketplace.events.envelope import build_envelope, rfc3339
from orders.models import Order

ORDER_PLACED = "order.placed"
ORDER_PLACED_VERSION = 1


def order_placed_envelope(*, order: Order, correlation_id: str) -> dict[str, Any]:
    buyer = order.buyer
    data = {
        "order_id": order.pk,
        "status": order.status,
        "placed_at": rfc3339(order.created_at),
        "buyer": {"id": buyer.pk, "email": buyer.email, "name": buyer.get_full_name() or buyer.get_username()},
        "lines": [
            {
                "product_id": line.product_id,
                "sku": line.sku,
                "name": line.name,
                "seller_id": line.seller_id,
                "quantity": line.quantity,
                "unit_price": str(line.unit_price),
                "line_total": str(line.line_total),
            }
            for line in order.lines.all()
        ],
        "total": str(order.total),
        "currency": order.currency,
    }
    return build_envelope(
        event_type=ORDER_PLACED,
        version=ORDER_PLACED_VERSION,
        data=data,
        occurred_at=order.created_at,
        correlation_id=correlation_id,
    )
