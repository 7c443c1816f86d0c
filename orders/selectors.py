from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import QuerySet

from orders.models import Order, Product, Seller


def product_list() -> QuerySet[Product]:
    return Product.objects.filter(is_active=True).select_related("seller").order_by("id")


def order_list(*, buyer) -> QuerySet[Order]:
    return Order.objects.filter(buyer=buyer).prefetch_related("lines").order_by("-created_at", "-id")


def order_get(*, buyer, order_id: int) -> Order | None:
    return order_list(buyer=buyer).filter(pk=order_id).first()


@dataclass(frozen=True)
class SellerContact:
    """How to reach a seller: all other apps may know of one (they use this, never the model)."""

    id: int
    name: str
    email: str
    webhook_url: str  # empty: the seller is emailed instead
    webhook_secret: str  # empty (and no webhook_secret_next): webhook requests go unsigned
    webhook_secret_next: str = ""  # during a secret rotation, the seller's new secret


def seller_contacts(*, seller_ids: Iterable[int]) -> dict[int, SellerContact]:
    """The contacts of those of ``seller_ids`` that exist, by seller id."""
    rows = Seller.objects.filter(pk__in=list(seller_ids)).values(
        "id", "name", "email", "webhook_url", "webhook_secret", "webhook_secret_next"
    )
    return {row["id"]: SellerContact(**row) for row in rows}
