from django.urls import path

from orders import apis


def with_and_without_slash(route: str, view, name: str) -> list:
    """``route`` (ending in a slash), named and documented, and the same view without the slash.

    Otherwise Django's APPEND_SLASH answers ``POST /api/orders`` with a 301 (a client follows it
    with a GET: the order is lost) or, under DEBUG, a 500. ``schema=None`` keeps the twin out of
    the OpenAPI schema, which documents each operation once, under its canonical path.
    """
    return [path(route, view.as_view(), name=name), path(route.removesuffix("/"), view.as_view(schema=None))]


urlpatterns = [
    *with_and_without_slash("products/", apis.ProductListApi, "product-list"),
    *with_and_without_slash("orders/", apis.OrderListCreateApi, "order-list"),
    *with_and_without_slash("orders/<int:order_id>/", apis.OrderDetailApi, "order-detail"),
    *with_and_without_slash("orders/<int:order_id>/cancel/", apis.OrderCancelApi, "order-cancel"),
]
