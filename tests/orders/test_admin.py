import pytest

from orders.models import Order
from tests.factories import ProductFactory, SellerFactory
from tests.support.orders import place

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """admin_client logs in a superuser with a password; the real hasher is slow on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def order(api):
    hammer, bolts = ProductFactory(sku="HAMMER-1"), ProductFactory(sku="BOLTS-8")
    response = place(api, (hammer, 1), (bolts, 2))
    return Order.objects.get(pk=response.json()["id"])


@pytest.mark.parametrize(
    "url",
    [
        "/admin/orders/product/",
        "/admin/orders/order/",
        "/admin/orders/seller/",
        "/admin/orders/product/?is_active__exact=0",
        "/admin/orders/order/?status__exact=placed",
    ],
)
def test_the_changelists_open(admin_client, order, url):
    assert admin_client.get(url).status_code == 200


def test_an_order_opens_with_its_lines_inline(admin_client, order):
    response = admin_client.get(f"/admin/orders/order/{order.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "HAMMER-1" in html
    assert "BOLTS-8" in html


def test_orders_are_not_added_in_the_admin(admin_client):
    assert admin_client.get("/admin/orders/order/add/").status_code == 403


def test_products_are_found_by_sku(admin_client):
    wanted = ProductFactory(sku="FIND-ME-42", name="Drill")
    ProductFactory(sku="OTHER-1", name="Saw")

    response = admin_client.get("/admin/orders/product/", {"q": "find-me"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [wanted]


def test_a_product_change_page_opens(admin_client):
    product = ProductFactory(seller=SellerFactory(), stock=3)

    assert admin_client.get(f"/admin/orders/product/{product.pk}/change/").status_code == 200


def test_the_admin_needs_a_staff_login(client):
    response = client.get("/admin/orders/order/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_orders_cannot_be_deleted_or_change_status_in_the_admin(admin_client, order):
    assert admin_client.get(f"/admin/orders/order/{order.pk}/delete/").status_code == 403
    changelist = admin_client.get("/admin/orders/order/")
    assert "delete_selected" not in changelist.content.decode()

    admin_client.post(f"/admin/orders/order/{order.pk}/change/", {"status": "cancelled"})

    order.refresh_from_db()
    assert order.status == Order.Status.PLACED
    assert Order.objects.filter(pk=order.pk).exists()
