from django.db.models import QuerySet

from orders.models import Order, Product


def product_list() -> QuerySet[Product]:
    return Product.objects.filter(is_active=True).select_related("seller").order_by("id")


def order_list(*, buyer) -> QuerySet[Order]:
    return Order.objects.filter(buyer=buyer).prefetch_related("lines").order_by("-created_at", "-id")


def order_get(*, buyer, order_id: int) -> Order | None:
    return order_list(buyer=buyer).filter(pk=order_id).first()
