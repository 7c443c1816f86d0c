import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from api_tokens.models import ApiToken
from orders.models import Product, Seller
from tests.factories import token_for

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
        "tokens": ApiToken.objects.count(),
    }


def printed_tokens(output: str) -> list[str]:
    return re.findall(r"Authorization: Token (\w+)", output)


def authenticates(token: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get("/api/orders/").status_code == 200


def test_seeding_twice_creates_everything_once_and_prints_new_tokens_that_replace_the_old():
    first_output = seed()
    after_first = counts()

    second_output = seed()

    assert counts() == after_first  # one token per demo buyer: restarts pile up none
    assert after_first["sellers"] > 0
    assert after_first["products"] > 0
    first, second = printed_tokens(first_output), printed_tokens(second_output)
    assert len(first) == len(second) == after_first["tokens"] == 2
    assert set(first).isdisjoint(second)
    assert [authenticates(token) for token in first + second] == [False, False, True, True]
    assert get_user_model().objects.get(username="admin").is_superuser


def test_seeding_leaves_a_demo_buyers_other_tokens_alone():
    seed()
    own = token_for(get_user_model().objects.get(username="alice"))

    seed()

    assert authenticates(own)


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
