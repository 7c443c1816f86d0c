"""PostgreSQL out of reach: the API answers 503 problem+json with Retry-After, changes nothing, and
takes orders again as soon as the database is back.

The live server reaches PostgreSQL through a TCP proxy the test cuts (tests/support/tcp_proxy.py):
its connections die and new ones are refused, as when the database host goes away, while the test
keeps its own direct connection to check what was written.
"""

import pytest
import requests
from django.db import DEFAULT_DB_ALIAS, OperationalError, connection, connections
from django.test import RequestFactory

from marketplace.problems import PROBLEM_BASE_URI, PROBLEM_CONTENT_TYPE, server_error_view
from orders.models import Order
from tests.factories import BuyerFactory, ProductFactory, token_for


@pytest.fixture
def server_behind_proxy(live_server, database_proxy):
    """The live server, its database connections going through the proxy.

    A thread's first query builds its connection from ``connections.settings``, and the live server
    handles each request in a new thread whose connection it closes afterwards: pointing those
    settings at the proxy reroutes the server's next connections. The test's own connection, opened
    before, stays direct.
    """
    database = connections.settings[DEFAULT_DB_ALIAS]
    connection.ensure_connection()
    direct = database["HOST"], database["PORT"]
    database["HOST"], database["PORT"] = "127.0.0.1", str(database_proxy.port)
    try:
        yield live_server
    finally:
        database["HOST"], database["PORT"] = direct


def place_order(server, token: str, product_id: int) -> requests.Response:
    # A new connection per request (no session): the server handles each in a new thread.
    return requests.post(
        f"{server.url}/api/orders/",
        json={"lines": [{"product": product_id, "quantity": 1}]},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )


def assert_unavailable(response: requests.Response, path: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["Retry-After"] == "5"
    body = response.json()
    assert body["type"] == PROBLEM_BASE_URI + "service-unavailable"
    assert body["status"] == 503
    assert body["instance"] == path
    assert body["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
def test_an_order_while_the_database_is_unreachable_is_a_503_and_then_goes_through(
    server_behind_proxy, database_proxy, settings, debug
):
    settings.DEBUG = debug
    token = token_for(BuyerFactory())
    product = ProductFactory(stock=5)
    assert place_order(server_behind_proxy, token, product.pk).status_code == 201

    database_proxy.cut()
    assert_unavailable(place_order(server_behind_proxy, token, product.pk), "/api/orders/")
    listed = requests.get(f"{server_behind_proxy.url}/api/products/", timeout=30)
    assert_unavailable(listed, "/api/products/")
    assert Order.objects.count() == 1
    product.refresh_from_db()
    assert product.stock == 4

    database_proxy.restore()
    assert place_order(server_behind_proxy, token, product.pk).status_code == 201
    assert Order.objects.count() == 2


def test_a_request_without_credentials_is_a_503_when_its_count_cannot_be_written(
    server_behind_proxy, database_proxy, settings
):
    """Refused for its missing token, it would be a 401; first it counts against its address's rate
    limit, in the database (marketplace/ratelimits/). Under DEBUG too, where no handler500 would
    turn a failure to count into a 503."""
    settings.DEBUG = True
    database_proxy.cut()

    response = requests.get(f"{server_behind_proxy.url}/api/orders/", timeout=30)

    assert_unavailable(response, "/api/orders/")


def test_outside_the_api_views_an_unreachable_database_is_a_503_too(server_behind_proxy, database_proxy, settings):
    """Django's handler500 (DEBUG off): the admin reads the session a cookie names from the database."""
    settings.DEBUG = False
    database_proxy.cut()

    response = requests.get(f"{server_behind_proxy.url}/admin/", cookies={"sessionid": "x" * 32}, timeout=30)

    assert_unavailable(response, "/admin/")


def test_handler500_tells_a_database_failure_from_a_bug(db):
    request = RequestFactory().get("/admin/")
    request.request_id = "test"
    try:
        raise OperationalError("connection refused")
    except OperationalError:
        unavailable = server_error_view(request)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        failed = server_error_view(request)

    assert (unavailable.status_code, unavailable["Retry-After"]) == (503, "5")
    assert failed.status_code == 500
    assert not failed.has_header("Retry-After")
