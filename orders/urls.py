from django.urls import path

from orders import apis

urlpatterns = [
    path("products/", apis.ProductListApi.as_view(), name="product-list"),
    path("orders/", apis.OrderListCreateApi.as_view(), name="order-list"),
    path("orders/<int:order_id>/", apis.OrderDetailApi.as_view(), name="order-detail"),
]
