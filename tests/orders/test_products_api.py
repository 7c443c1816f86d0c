from decimal import Decimal

import pytest
from rest_framework.pagination import PageNumberPagination

from orders.filters import MAX_ID
from tests.factories import ProductFactory, SellerFactory
from tests.support.orders import ORDERS_URL, PRODUCTS_URL, assert_problem

pytestmark = pytest.mark.django_db


def ids(response) -> list[int]:
    return [product["id"] for product in response.json()["results"]]


def test_products_are_listed_oldest_first_without_a_token(client):
    seller = SellerFactory(name="Acme")
    hammer = ProductFactory(seller=seller, sku="HAMMER", name="Claw hammer", price=Decimal("19.90"), stock=7)
    wrench = ProductFactory(seller=seller)

    response = client.get(PRODUCTS_URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["results"][0] == {
        "id": hammer.pk,
        "sku": "HAMMER",
        "name": "Claw hammer",
        "seller": seller.pk,
        "seller_name": "Acme",
        "price": "19.90",
        "stock": 7,
    }
    assert ids(response) == [hammer.pk, wrench.pk]


def test_products_are_paginated(client):
    page_size = PageNumberPagination.page_size
    products = ProductFactory.create_batch(page_size + 3)

    first = client.get(PRODUCTS_URL)
    second = client.get(first.json()["next"])

    assert first.json()["count"] == page_size + 3
    assert first.json()["previous"] is None
    assert ids(first) == [product.pk for product in products[:page_size]]
    assert second.json()["next"] is None
    assert ids(second) == [product.pk for product in products[page_size:]]


def test_inactive_products_are_not_listed(client):
    active = ProductFactory()
    ProductFactory(is_active=False)

    response = client.get(PRODUCTS_URL)

    assert response.json()["count"] == 1
    assert ids(response) == [active.pk]


def test_filter_by_seller(client):
    seller, other = SellerFactory(), SellerFactory()
    mine = ProductFactory.create_batch(2, seller=seller)
    ProductFactory(seller=other)

    response = client.get(PRODUCTS_URL, {"seller": seller.pk})

    assert ids(response) == [product.pk for product in mine]


@pytest.mark.parametrize(("in_stock", "expected"), [("true", ["available"]), ("false", ["sold_out"])])
def test_filter_by_stock(client, in_stock, expected):
    products = {"available": ProductFactory(stock=1), "sold_out": ProductFactory(stock=0)}

    response = client.get(PRODUCTS_URL, {"in_stock": in_stock})

    assert ids(response) == [products[name].pk for name in expected]


def test_filters_combine_and_still_hide_inactive_products(client):
    seller = SellerFactory()
    wanted = ProductFactory(seller=seller, stock=3)
    ProductFactory(seller=seller, stock=0)
    ProductFactory(seller=seller, stock=3, is_active=False)
    ProductFactory(stock=3)

    response = client.get(PRODUCTS_URL, {"seller": seller.pk, "in_stock": "true"})

    assert ids(response) == [wanted.pk]


def test_a_seller_without_products_is_an_empty_list(client):
    ProductFactory()

    response = client.get(PRODUCTS_URL, {"seller": MAX_ID})

    assert response.status_code == 200
    assert response.json()["count"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("seller", "acme"),
        ("seller", "1.5"),  # was read as seller 1
        ("seller", "1.0"),
        ("seller", ""),  # was ignored
        ("seller", "0"),
        ("seller", "-1"),
        ("seller", " 1"),
        ("seller", str(MAX_ID + 1)),
        ("seller", "9" * 5000),
        ("in_stock", "maybe"),  # was ignored
        ("in_stock", ""),
        ("in_stock", "1"),
        ("in_stock", "True"),
        ("in_stock", "yes"),
    ],
)
def test_a_malformed_filter_is_a_400_problem_naming_it(client, name, value):
    seller = SellerFactory(pk=1)
    ProductFactory(seller=seller)

    body = assert_problem(client.get(PRODUCTS_URL, {name: value}), 400, "validation-error")

    assert [error["attr"] for error in body["errors"]] == [name]


@pytest.mark.parametrize("url", [PRODUCTS_URL, ORDERS_URL])
@pytest.mark.parametrize("page", ["0", "", "-1", "1.5", "abc", "last", " 1", "\u0661"])
def test_a_page_that_is_not_an_integer_from_1_is_a_400_problem(api, url, page):
    ProductFactory()

    body = assert_problem(api.get(url, {"page": page}), 400, "validation-error")

    assert [error["attr"] for error in body["errors"]] == ["page"]


@pytest.mark.parametrize("url", [PRODUCTS_URL, ORDERS_URL])
@pytest.mark.parametrize("page", ["2", "9" * 5000])
def test_a_page_past_the_end_is_a_404_problem(api, url, page):
    ProductFactory()

    assert_problem(api.get(url, {"page": page}), 404, "not-found")


@pytest.mark.parametrize("page", ["1", "01"])
def test_the_first_page_exists_even_when_empty(api, page):
    response = api.get(ORDERS_URL, {"page": page})

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_products_are_listed_without_the_trailing_slash_too(client):
    ProductFactory()

    response = client.get(PRODUCTS_URL.removesuffix("/"))

    assert response.status_code == 200
    assert response.json() == client.get(PRODUCTS_URL).json()


def test_a_bad_token_is_refused_even_on_the_public_list(client):
    response = client.get(PRODUCTS_URL, headers={"Authorization": "Token not-a-real-token"})

    assert_problem(response, 401, "authentication-failed")
