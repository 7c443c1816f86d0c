"""Orders racing for the same stock, each request in its own thread with its own database connection."""

import random
from collections import Counter

import pytest
from django.db.models import Sum

from marketplace.events.models import OutboxEvent
from orders.models import Order, OrderLine
from tests.factories import BuyerFactory, ProductFactory
from tests.support.orders import place, run_concurrently

pytestmark = pytest.mark.django_db(transaction=True)


def outcomes(responses) -> Counter:
    """Status codes; an exception a thread raised (a 500 re-raised by the test client) counts as itself."""
    return Counter(getattr(response, "status_code", repr(response)) for response in responses)


def test_fifty_buyers_race_for_the_last_five_units(client_for):
    product = ProductFactory(stock=5)
    clients = [client_for(buyer) for buyer in BuyerFactory.create_batch(50)]

    responses = run_concurrently([lambda client=client: place(client, (product, 1)) for client in clients])

    assert outcomes(responses) == {201: 5, 409: 45}
    for response in responses:
        if response.status_code == 409:
            assert response.json()["shortages"][0]["product"] == product.pk
    product.refresh_from_db()
    assert product.stock == 0
    assert Order.objects.count() == 5
    assert OrderLine.objects.filter(product=product).aggregate(sold=Sum("quantity"))["sold"] == 5
    assert OutboxEvent.objects.count() == 5
    assert {event.envelope["data"]["order_id"] for event in OutboxEvent.objects.all()} == {
        response.json()["id"] for response in responses if response.status_code == 201
    }


def test_multi_line_orders_in_opposite_line_orders_do_not_deadlock(client_for):
    initial = 30
    products = ProductFactory.create_batch(3, stock=initial)
    rng = random.Random(20240601)
    orders = []
    for index in range(20):
        lines = [(product, rng.randint(1, 4)) for product in products]
        orders.append(lines if index % 2 == 0 else lines[::-1])  # half ask for the products in reverse
    clients = [client_for(buyer) for buyer in BuyerFactory.create_batch(len(orders))]

    responses = run_concurrently(
        [
            lambda client=client, lines=lines: place(client, *lines)
            for client, lines in zip(clients, orders, strict=True)
        ]
    )

    counts = outcomes(responses)
    assert set(counts) <= {201, 409}, counts
    assert counts[201] >= 1
    accepted = [response.json() for response in responses if response.status_code == 201]
    assert all(len(order["lines"]) == 3 for order in accepted)  # all lines or nothing
    sold = Counter()
    for order in accepted:
        sold.update({line["product"]: line["quantity"] for line in order["lines"]})
    for product in products:
        product.refresh_from_db()
        assert product.stock == initial - sold[product.pk] >= 0
        assert OrderLine.objects.filter(product=product).aggregate(total=Sum("quantity"))["total"] == sold[product.pk]
    assert Order.objects.count() == len(accepted) == OutboxEvent.objects.count()


def test_a_sold_out_product_refuses_everyone_and_stays_at_zero(client_for):
    product = ProductFactory(stock=0)
    clients = [client_for(buyer) for buyer in BuyerFactory.create_batch(10)]

    responses = run_concurrently([lambda client=client: place(client, (product, 1)) for client in clients])

    assert outcomes(responses) == {409: 10}
    product.refresh_from_db()
    assert product.stock == 0
    assert Order.objects.count() == 0
