"""The events the orders domain publishes. Who consumes them is not this module's business."""

from __future__ import annotations

from typing import Any, Literal

from marketplace.events.envelope import build_envelope, rfc3339
from orders.models import Order

ORDER_PLACED = "order.placed"
ORDER_PLACED_VERSION = 1
ORDER_CANCELLED = "order.cancelled"
ORDER_CANCELLED_VERSION = 1

CancelledBy = Literal["buyer", "staff"]


def order_placed_envelope(*, order: Order, correlation_id: str) -> dict[str, Any]:
    return build_envelope(
        event_type=ORDER_PLACED,
        version=ORDER_PLACED_VERSION,
        data=_order_data(order),
        occurred_at=order.created_at,
        correlation_id=correlation_id,
    )


def order_cancelled_envelope(*, order: Order, cancelled_by: CancelledBy, correlation_id: str) -> dict[str, Any]:
    """The order as it was placed (its lines, prices and total unchanged), now with status
    "cancelled", and when and by whom: a consumer needs no order.placed to act on it."""
    data = {
        **_order_data(order),
        "cancelled_at": rfc3339(order.cancelled_at),
        "cancelled_by": cancelled_by,
    }
    return build_envelope(
        event_type=ORDER_CANCELLED,
        version=ORDER_CANCELLED_VERSION,
        data=data,
        occurred_at=order.cancelled_at,
        correlation_id=correlation_id,
    )


def _order_data(order: Order) -> dict[str, Any]:
    buyer = order.buyer
    return {
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
