from datetime import datetime
from decimal import Decimal

import pytest

from marketplace.events.envelope import validate_envelope
from marketplace.events.models import OutboxEvent
from orders.models import Order, OrderLine
from tests.factories import ProductFactory, SellerFactory
from tests.support.orders import ORDERS_URL, place

pytestmark = pytest.mark.django_db


def test_placing_an_order_returns_the_order(api, buyer):
    seller_a, seller_b = SellerFactory(), SellerFactory()
    hammer = ProductFactory(seller=seller_a, sku="HAMMER", name="Claw hammer", price=Decimal("19.90"), stock=5)
    bolts = ProductFactory(seller=seller_b, sku="BOLTS", name="M8 bolts", price=Decimal("0.33"), stock=500)

    response = place(api, (hammer, 2), (bolts, 3))

    assert response.status_code == 201, response.content
    body = response.json()
    order = Order.objects.get()
    assert order.buyer == buyer
    assert body == {
        "id": order.pk,
        "status": "placed",
        "lines": [
            {
                "product": hammer.pk,
                "sku": "HAMMER",
                "name": "Claw hammer",
                "seller": seller_a.pk,
                "quantity": 2,
                "unit_price": "19.90",
                "line_total": "39.80",
            },
            {
                "product": bolts.pk,
                "sku": "BOLTS",
                "name": "M8 bolts",
                "seller": seller_b.pk,
                "quantity": 3,
                "unit_price": "0.33",
                "line_total": "0.99",
            },
        ],
        "total": "40.79",
        "currency": "EUR",
        "created_at": body["created_at"],
    }
    assert datetime.fromisoformat(body["created_at"]) == order.created_at


def test_location_points_at_the_new_order(api):
    product = ProductFactory()

    response = place(api, (product, 1))

    assert response["Location"] == f"/api/orders/{response.json()['id']}/"
    fetched = api.get(response["Location"])
    assert fetched.status_code == 200
    assert fetched.json() == response.json()


def test_stock_is_reduced_by_the_ordered_quantities(api):
    hammer, bolts, untouched = ProductFactory(stock=5), ProductFactory(stock=10), ProductFactory(stock=7)

    place(api, (hammer, 2), (bolts, 10))

    hammer.refresh_from_db()
    bolts.refresh_from_db()
    untouched.refresh_from_db()
    assert (hammer.stock, bolts.stock, untouched.stock) == (3, 0, 7)


def test_prices_come_from_the_product_not_the_client(api):
    product = ProductFactory(price=Decimal("25.00"))
    body = {"lines": [{"product": product.pk, "quantity": 2, "unit_price": "0.01", "price": "0.01"}], "total": "0.02"}

    response = api.post(ORDERS_URL, body, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["lines"][0]["unit_price"] == "25.00"
    assert response.json()["total"] == "50.00"
    assert OrderLine.objects.get().unit_price == Decimal("25.00")


def test_a_line_keeps_what_the_product_was_when_it_was_sold(api):
    product = ProductFactory(name="Old name", price=Decimal("5.00"))
    order_id = place(api, (product, 1)).json()["id"]

    product.name, product.price = "New name", Decimal("6.00")
    product.save()

    line = api.get(f"{ORDERS_URL}{order_id}/").json()["lines"][0]
    assert (line["name"], line["unit_price"]) == ("Old name", "5.00")


def test_an_order_may_take_the_last_unit_and_the_largest_allowed_quantity(api, settings):
    product = ProductFactory(stock=settings.ORDER_MAX_QUANTITY)

    response = place(api, (product, settings.ORDER_MAX_QUANTITY))

    assert response.status_code == 201, response.content
    product.refresh_from_db()
    assert product.stock == 0


def test_an_order_may_have_the_largest_allowed_number_of_lines(api, settings):
    settings.ORDER_MAX_LINES = 3
    products = ProductFactory.create_batch(3)

    response = place(api, *[(product, 1) for product in products])

    assert response.status_code == 201, response.content
    assert len(response.json()["lines"]) == 3


def test_one_order_placed_event_is_written_to_the_outbox(api, buyer):
    hammer, bolts = ProductFactory(price=Decimal("19.90")), ProductFactory(price=Decimal("2.50"))

    response = place(api, (hammer, 1), (bolts, 4), headers={"X-Request-ID": "req-123"})

    order = response.json()
    assert order["total"] == "29.90"
    event = OutboxEvent.objects.get()
    envelope = validate_envelope(event.envelope)
    assert event.event_type == envelope["type"] == "order.placed"
    assert str(event.event_id) == envelope["id"]
    assert envelope["correlation_id"] == "req-123" == response["X-Request-ID"]
    assert envelope["data"] == {
        "order_id": order["id"],
        "status": "placed",
        "placed_at": envelope["occurred_at"],
        "buyer": {"id": buyer.pk, "email": buyer.email, "name": buyer.get_full_name()},
        "lines": [
            {
                "product_id": line["product"],
                "sku": line["sku"],
                "name": line["name"],
                "seller_id": line["seller"],
                "quantity": line["quantity"],
                "unit_price": line["unit_price"],
                "line_total": line["line_total"],
            }
            for line in order["lines"]
        ],
        "total": "29.90",
        "currency": order["currency"],
    }
    assert datetime.fromisoformat(envelope["occurred_at"]) == datetime.fromisoformat(order["created_at"])


def test_each_order_gets_its_own_event(api):
    product = ProductFactory()

    first, second = place(api, (product, 1)), place(api, (product, 1))

    assert first.json()["id"] != second.json()["id"]
    order_ids = sorted(event.envelope["data"]["order_id"] for event in OutboxEvent.objects.all())
    assert order_ids == sorted([first.json()["id"], second.json()["id"]])


def test_a_whole_number_written_with_a_decimal_point_is_an_integer(api):
    product = ProductFactory(stock=5)

    response = api.post(ORDERS_URL, {"lines": [{"product": float(product.pk), "quantity": 2.0}]}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["lines"][0]["quantity"] == 2


def test_placing_an_order_takes_only_the_statements_it_must(api, django_assert_max_num_queries):
    hammer, bolts = ProductFactory(stock=5), ProductFactory(stock=5)

    # The token; the rate limits (the address's count read, the buyer's counted); the products
    # locked; the order (with its total), stock, lines and outbox row written; the transaction
    # around them. Nothing that was just written is read back.
    # (An Idempotency-Key adds its lock, its lookup and its row.)
    with django_assert_max_num_queries(10):
        response = place(api, (hammer, 1), (bolts, 2))

    assert response.status_code == 201, response.content
