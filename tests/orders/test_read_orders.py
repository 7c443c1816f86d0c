import pytest
from rest_framework.pagination import PageNumberPagination
from rest_framework.test import APIClient

from tests.factories import BuyerFactory, ProductFactory
from tests.support.orders import ORDERS_URL, assert_problem, place

pytestmark = pytest.mark.django_db


@pytest.fixture
def product():
    return ProductFactory(stock=1000)


def order_ids(response) -> list[int]:
    return [order["id"] for order in response.json()["results"]]


def test_a_buyer_lists_only_their_own_orders_newest_first(api, client_for, product):
    first = place(api, (product, 1)).json()
    place(client_for(BuyerFactory()), (product, 1))
    second = place(api, (product, 2)).json()

    response = api.get(ORDERS_URL)

    assert response.status_code == 200
    assert response.json()["count"] == 2
    assert response.json()["results"] == [second, first]


def test_the_order_list_is_paginated(api, product):
    page_size = PageNumberPagination.page_size
    placed = [place(api, (product, 1)).json()["id"] for _ in range(page_size + 2)]
    newest_first = placed[::-1]

    first_page = api.get(ORDERS_URL)
    second_page = api.get(first_page.json()["next"])

    assert first_page.json()["count"] == page_size + 2
    assert order_ids(first_page) == newest_first[:page_size]
    assert order_ids(second_page) == newest_first[page_size:]
    assert second_page.json()["next"] is None


def test_a_buyer_without_orders_gets_an_empty_list(api):
    assert api.get(ORDERS_URL).json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_a_buyer_reads_one_of_their_orders(api, product):
    placed = place(api, (product, 3)).json()

    response = api.get(f"{ORDERS_URL}{placed['id']}/")

    assert response.status_code == 200
    assert response.json() == placed


def test_another_buyers_order_is_a_404(api, client_for, product):
    theirs = place(client_for(BuyerFactory()), (product, 1)).json()

    response = api.get(f"{ORDERS_URL}{theirs['id']}/")

    body = assert_problem(response, 404, "not-found")
    assert set(body) == {"type", "title", "status", "detail", "instance", "request_id"}
    missing = assert_problem(api.get(f"{ORDERS_URL}{theirs['id'] + 1000}/"), 404, "not-found")
    assert body["detail"] == missing["detail"]  # indistinguishable from an order that does not exist


@pytest.mark.parametrize("order_id", ["999999999", str(2**63), str(10**30)])
def test_an_unknown_order_is_a_404(api, order_id):
    assert_problem(api.get(f"{ORDERS_URL}{order_id}/"), 404, "not-found")


def test_a_path_that_is_no_order_id_is_a_404_problem(api):
    response = api.get(f"{ORDERS_URL}abc/")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 404


@pytest.mark.parametrize("path", [ORDERS_URL, f"{ORDERS_URL}1/"])
def test_reading_orders_needs_a_token(path):
    assert_problem(APIClient().get(path), 401, "not-authenticated")


@pytest.mark.parametrize("path", [ORDERS_URL, f"{ORDERS_URL}1/"])
def test_reading_orders_with_a_bad_token_is_a_401(path):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert_problem(client.get(path), 401, "authentication-failed")
