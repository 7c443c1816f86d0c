from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from marketplace import metrics
from marketplace.events.outbox import enqueue_event
from marketplace.exceptions import Conflict, InvalidInput, NotFound, UnprocessableRequest
from marketplace.internals.django import cache_prefetched
from orders.events import CancelledBy, order_cancelled_envelope, order_placed_envelope
from orders.models import IdempotencyKey, Order, OrderLine, Product

CENT = Decimal("0.01")


@dataclass(frozen=True)
class LineRequest:
    product_id: int
    quantity: int


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    replayed: bool = False


class InsufficientStock(Conflict):
    slug = "insufficient-stock"
    title = "Insufficient stock"


class IdempotencyKeyReused(UnprocessableRequest):
    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class OrderNotFound(NotFound):
    """Another buyer's order is not found either."""


class OrderNotCancellable(Conflict):
    slug = "order-not-cancellable"
    title = "Order not cancellable"


@dataclass(frozen=True)
class CancelledOrder:
    order: Order  # with its lines loaded
    already_cancelled: bool = False  # an earlier call cancelled it; this one changed nothing


# Where a cancel may start from. Any other state (a future "shipped", say) is a conflict, so a new
# state is not cancellable until someone decides it is and says how its stock comes back.
CANCELLABLE_STATUSES = frozenset({Order.Status.PLACED})


def request_fingerprint(lines: list[LineRequest]) -> str:
    canonical = json.dumps(sorted((line.product_id, line.quantity) for line in lines))
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_place(
    *,
    buyer: AbstractBaseUser,
    lines: list[LineRequest],
    correlation_id: str,
    idempotency_key: str | None = None,
) -> PlacedOrder:
    """Place an order: check every line, take the stock, save the order and its event, atomically.

    Product rows are locked in id order, so concurrent multi-line orders cannot deadlock, and
    stock is checked under the lock, so it never goes below zero (the CHECK constraint backs
    this up). The ``order.placed`` event is written to the outbox in the same transaction.
    """
    fingerprint = request_fingerprint(lines)
    with transaction.atomic():
        if idempotency_key is not None:
            _lock_idempotency_key(buyer_id=buyer.pk, key=idempotency_key)
            previous = (
                IdempotencyKey.objects.filter(buyer=buyer, key=idempotency_key)
                .values_list("request_fingerprint", "order_id")
                .first()
            )
            if previous is not None:
                previous_fingerprint, previous_order_id = previous
                if previous_fingerprint != fingerprint:
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key was used with a different request body.",
                        order=previous_order_id,
                    )
                return PlacedOrder(order=Order.objects.get(pk=previous_order_id), replayed=True)

        order = order_create(buyer=buyer, lines=lines)
        if idempotency_key is not None:
            IdempotencyKey.objects.create(
                buyer=buyer, key=idempotency_key, request_fingerprint=fingerprint, order=order
            )
        enqueue_event(order_placed_envelope(order=order, correlation_id=correlation_id))
    metrics.count_order_placed()  # after the commit; idempotent replays returned above
    return PlacedOrder(order=order)


def order_cancel(
    *,
    order_id: int,
    cancelled_by: CancelledBy,
    correlation_id: str,
    buyer: AbstractBaseUser | None = None,
) -> CancelledOrder:
    """Cancel a placed order: give back every line's stock, mark it cancelled and save its
    ``order.cancelled`` event, atomically. ``buyer`` limits the search to that buyer's orders (the
    API: anyone else's is OrderNotFound); staff pass none.

    Cancelling a cancelled order changes nothing and publishes nothing (``already_cancelled``), so
    a retried request gets the same answer. Raises OrderNotCancellable from any other state.

    The order row is locked first, so concurrent cancels of one order run one after the other and
    every later one finds it cancelled: the stock comes back once. The products are then locked in
    id order, as order_create locks them, so a cancel and new orders for the same products wait for
    each other instead of deadlocking, and every stock change is made under its row's lock.
    """
    with transaction.atomic():
        # of=("self",): FOR UPDATE OF the order alone, not the buyer row that select_related joins.
        orders = Order.objects.select_for_update(of=("self",)).select_related("buyer")
        if buyer is not None:
            orders = orders.filter(buyer=buyer)
        order = orders.filter(pk=order_id).first()
        if order is None:
            raise OrderNotFound("No such order.")
        lines = list(order.lines.all())
        cache_prefetched(order, "lines", lines)
        if order.status == Order.Status.CANCELLED:
            return CancelledOrder(order=order, already_cancelled=True)
        if order.status not in CANCELLABLE_STATUSES:
            raise OrderNotCancellable(
                f"Order {order.pk} is {order.status}; only a placed order can be cancelled.",
                order_status=order.status,
            )

        locked = Product.objects.select_for_update().filter(pk__in=sorted({line.product_id for line in lines}))
        products = {product.pk: product for product in locked.order_by("pk")}
        for line in lines:
            products[line.product_id].stock += line.quantity
        _save_stock(products.values())
        order.status = Order.Status.CANCELLED
        order.cancelled_at = timezone.now()
        order.save(update_fields=["status", "cancelled_at"])
        enqueue_event(order_cancelled_envelope(order=order, cancelled_by=cancelled_by, correlation_id=correlation_id))
    return CancelledOrder(order=order)


def order_create(*, buyer: AbstractBaseUser, lines: list[LineRequest]) -> Order:
    """Within the caller's transaction: lock the lines' products in id order, check them and their
    stock, take the stock, and write the order (with its total) and its lines.

    Raises InvalidInput for an unknown or inactive product and InsufficientStock for a shortage.
    """
    # Not an assert: `python -O` would drop it, and stock taken outside a transaction could be lost.
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("order_create must run inside a transaction")
    products = {
        product.pk: product
        for product in Product.objects.select_for_update()
        .filter(pk__in=sorted({line.product_id for line in lines}))
        .order_by("pk")
    }
    _check_products(lines, products)
    _check_stock(lines, products)

    order = Order(buyer=buyer, currency=settings.MARKETPLACE_CURRENCY)
    order_lines = []
    for line in lines:
        product = products[line.product_id]
        product.stock -= line.quantity
        order_lines.append(
            OrderLine(
                order=order,
                product=product,
                seller_id=product.seller_id,
                sku=product.sku,
                name=product.name,
                quantity=line.quantity,
                unit_price=product.price,
                line_total=(product.price * line.quantity).quantize(CENT),
            )
        )
    order.total = sum((line.line_total for line in order_lines), Decimal("0.00"))
    order.save()
    _save_stock(products.values())
    OrderLine.objects.bulk_create(order_lines)
    cache_prefetched(order, "lines", order_lines)
    return order


def _save_stock(products) -> None:
    """One UPDATE for every line's product (bulk_update's CASE expression costs more CPU to build
    than the rest of the transaction's statements together)."""
    products = list(products)
    table, stock = Product._meta.db_table, Product._meta.get_field("stock").column
    with connection.cursor() as cursor:
        cursor.execute(
            # S608: table and column names from the model, every value a parameter.
            f"UPDATE {table} SET {stock} = v.stock FROM (VALUES {', '.join(['(%s, %s)'] * len(products))}) "  # noqa: S608
            f"AS v(id, stock) WHERE {table}.id = v.id::bigint",
            [value for product in products for value in (product.pk, product.stock)],
        )


def _lock_idempotency_key(*, buyer_id: int, key: str) -> None:
    """Serialise requests carrying the same key for the same buyer until this transaction ends."""
    digest = hashlib.blake2b(f"{buyer_id}:{key}".encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, "big", signed=True)])


def _check_products(lines: list[LineRequest], products: dict[int, Product]) -> None:
    errors = []
    for index, line in enumerate(lines):
        product = products.get(line.product_id)
        if product is None:
            errors.append(
                {
                    "attr": f"lines.{index}.product",
                    "code": "does_not_exist",
                    "detail": f"Product {line.product_id} does not exist.",
                }
            )
        elif not product.is_active:
            errors.append(
                {
                    "attr": f"lines.{index}.product",
                    "code": "inactive",
                    "detail": f"Product {line.product_id} is not for sale.",
                }
            )
    if errors:
        raise InvalidInput(errors)


def _check_stock(lines: list[LineRequest], products: dict[int, Product]) -> None:
    shortages = [
        {
            "line": index,
            "product": line.product_id,
            "requested": line.quantity,
            "available": products[line.product_id].stock,
        }
        for index, line in enumerate(lines)
        if products[line.product_id].stock < line.quantity
    ]
    if shortages:
        raise InsufficientStock(
            "Not enough stock for "
            + ", ".join(
                f"product {s['product']} ({s['requested']} requested, {s['available']} available)" for s in shortages
            )
            + ".",
            shortages=shortages,
        )
