import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orders.models import Product, Seller

pytestmark = pytest.mark.django_db


def seed() -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    return {
        "sellers": Seller.objects.count(),
        "products": Product.objects.count(),
        "users": get_user_model().objects.count(),
        "tokens": Token.objects.count(),
    }


def test_seeding_twice_creates_everything_once_and_prints_the_same_tokens():
    first_output = seed()
    after_first = counts()

    second_output = seed()

    assert counts() == after_first
    assert after_first["sellers"] > 0
    assert after_first["products"] > 0
    tokens = re.findall(r"Authorization: Token (\w+)", first_output)
    assert tokens
    assert re.findall(r"Authorization: Token (\w+)", second_output) == tokens
    assert set(tokens) <= set(Token.objects.values_list("key", flat=True))
    assert get_user_model().objects.get(username="admin").is_superuser


def test_seeding_keeps_stock_that_orders_have_taken():
    seed()
    product = Product.objects.order_by("pk").first()
    Product.objects.filter(pk=product.pk).update(stock=1)

    seed()

    product.refresh_from_db()
    assert product.stock == 1


def test_a_printed_token_places_an_order():
    token = re.findall(r"Authorization: Token (\w+)", seed())[0]
    product = Product.objects.order_by("pk").first()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    response = client.post("/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json")

    assert response.status_code == 201, response.content
