"""Cancelling an order (issue 11): through the API by its buyer, or by staff with the admin action.

The 409 is tested with an order put, by a direct UPDATE, in a state the code does not know
("shipped"): nothing produces a non-cancellable state yet, and adding one to Order.Status only for a
test would put it in the API's schema and the admin's filters. The service refuses whatever is not
placed (or already cancelled), so this is the path a real future state will take.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import datetime

import pytest
from django.contrib.auth.models import Permission
from django.db.models import Sum
from jsonschema import Draft202012Validator, FormatChecker

from marketplace.events.envelope import InvalidEnvelope, schema_path, validate_envelope
from marketplace.events.models import OutboxEvent
from orders import services
from orders.models import Order, OrderLine, Product
from tests.factories import BuyerFactory, ProductFactory
from tests.support.orders import ORDERS_URL, assert_problem, place, run_concurrently, snapshot

pytestmark = pytest.mark.django_db

ORDER_CANCELLED_SCHEMA = json.loads(schema_path("order.cancelled", 1).read_text())
CHANGELIST_URL = "/admin/orders/order/"


def cancel(client, order_id, *, trailing_slash: bool = True, **extra):
    return client.post(f"{ORDERS_URL}{order_id}/cancel{'/' if trailing_slash else ''}", **extra)


def placed_order(client, *lines) -> Order:
    response = place(client, *lines)
    assert response.status_code == 201, response.content
    return Order.objects.get(pk=response.json()["id"])


def cancelled_events(order_id: int | None = None) -> list[OutboxEvent]:
    events = OutboxEvent.objects.filter(event_type="order.cancelled").order_by("id")
    return [event for event in events if order_id is None or event.envelope["data"]["order_id"] == order_id]


def reference_schema_errors(envelope: dict) -> list[str]:
    """What the reference implementation (jsonschema, with format checking) finds wrong."""
    validator = Draft202012Validator(ORDER_CANCELLED_SCHEMA, format_checker=FormatChecker())
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(envelope)]


def outcomes(responses) -> Counter:
    """Status codes; an exception a thread raised (a 500 re-raised by the test client) counts as itself."""
    return Counter(getattr(response, "status_code", repr(response)) for response in responses)


def stock_of(*products: Product) -> list[int]:
    return [Product.objects.get(pk=product.pk).stock for product in products]


@pytest.fixture
def products():
    return ProductFactory(stock=10), ProductFactory(stock=20)


# --- the API --------------------------------------------------------------------------------------


def test_cancelling_restores_the_stock_of_every_line_and_records_one_event(api, buyer, products):
    hammer, bolts = products
    order = placed_order(api, (hammer, 2), (bolts, 5))
    placed_body = api.get(f"{ORDERS_URL}{order.pk}/").json()
    assert stock_of(hammer, bolts) == [8, 15]

    response = cancel(api, order.pk, headers={"X-Request-ID": "cancel-req-1"})

    assert response.status_code == 200, response.content
    assert response.json() == {**placed_body, "status": "cancelled"}
    assert stock_of(hammer, bolts) == [10, 20]
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert order.cancelled_at is not None
    [event] = cancelled_events()
    envelope = event.envelope
    assert str(event.event_id) == envelope["id"]
    assert envelope["type"] == "order.cancelled"
    assert envelope["version"] == 1
    assert envelope["correlation_id"] == "cancel-req-1" == response["X-Request-ID"]
    assert datetime.fromisoformat(envelope["occurred_at"]) == order.cancelled_at
    [placed_event] = OutboxEvent.objects.filter(event_type="order.placed")
    # The order as it was placed, now cancelled, and when and by whom.
    assert envelope["data"] == {
        **placed_event.envelope["data"],
        "status": "cancelled",
        "cancelled_at": envelope["occurred_at"],
        "cancelled_by": "buyer",
    }


def test_the_event_keeps_the_contract_of_its_schema(api, products):
    order = placed_order(api, (products[0], 1), (products[1], 3))
    cancel(api, order.pk)
    [event] = cancelled_events()
    envelope = event.envelope

    assert validate_envelope(envelope) == envelope
    assert reference_schema_errors(envelope) == []
    for moment in (envelope["occurred_at"], envelope["data"]["cancelled_at"], envelope["data"]["placed_at"]):
        assert moment.endswith("Z")


@pytest.mark.parametrize(
    "change",
    [
        lambda data: data.update(status="placed"),
        lambda data: data.update(cancelled_by="robot"),
        lambda data: data.update(cancelled_at="2026-03-14T09:26:53+00:00"),
        lambda data: data.update(cancelled_at="yesterday"),
        lambda data: data.pop("cancelled_at"),
        lambda data: data.pop("cancelled_by"),
        lambda data: data.pop("lines"),
    ],
)
def test_both_validators_refuse_an_event_that_breaks_the_contract(api, products, change):
    order = placed_order(api, (products[0], 1))
    cancel(api, order.pk)
    envelope = copy.deepcopy(cancelled_events()[0].envelope)
    change(envelope["data"])

    with pytest.raises(InvalidEnvelope):
        validate_envelope(envelope)
    assert reference_schema_errors(envelope) != []


def test_cancelling_twice_answers_the_same_and_changes_nothing_more(api, products):
    hammer, bolts = products
    order = placed_order(api, (hammer, 2), (bolts, 5))

    first = cancel(api, order.pk)
    cancelled_at = Order.objects.get(pk=order.pk).cancelled_at
    after_first = snapshot()
    second = cancel(api, order.pk)

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert snapshot() == after_first
    assert stock_of(hammer, bolts) == [10, 20]  # restored once
    assert len(cancelled_events()) == 1
    assert Order.objects.get(pk=order.pk).cancelled_at == cancelled_at


def test_the_path_without_a_trailing_slash_cancels_too(api, products):
    order = placed_order(api, (products[0], 4))

    response = cancel(api, order.pk, trailing_slash=False)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert stock_of(products[0]) == [10]


def test_another_buyers_order_is_a_404_and_stays_placed(api, client_for, products):
    theirs = placed_order(client_for(BuyerFactory()), (products[0], 3))
    before = snapshot()

    response = cancel(api, theirs.pk)

    body = assert_problem(response, 404, "not-found")
    assert set(body) == {"type", "title", "status", "detail", "instance", "request_id"}
    # Indistinguishable from an order that does not exist.
    assert body["detail"] == assert_problem(cancel(api, theirs.pk + 1000), 404, "not-found")["detail"]
    assert snapshot() == before
    assert Order.objects.get(pk=theirs.pk).status == Order.Status.PLACED


@pytest.mark.parametrize("order_id", ["999999999", str(2**63), str(10**30), "abc"])
def test_an_unknown_order_is_a_404(api, order_id):
    response = cancel(api, order_id)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"


def test_an_order_that_is_neither_placed_nor_cancelled_is_a_409(api, products):
    order = placed_order(api, (products[0], 3))
    Order.objects.filter(pk=order.pk).update(status="shipped")  # a state to come, unknown to the code
    before = snapshot()

    response = cancel(api, order.pk)

    body = assert_problem(response, 409, "order-not-cancellable")
    assert body["order_status"] == "shipped"
    assert snapshot() == before
    assert Order.objects.filter(pk=order.pk).values_list("status", "cancelled_at").get() == ("shipped", None)


def test_cancelling_needs_a_token(client, api, products):
    order = placed_order(api, (products[0], 3))
    before = snapshot()

    response = cancel(client, order.pk)

    assert_problem(response, 401, "not-authenticated")
    assert snapshot() == before


def test_only_post_cancels(api, products):
    order = placed_order(api, (products[0], 3))

    assert_problem(api.get(f"{ORDERS_URL}{order.pk}/cancel/"), 405)
    assert Order.objects.get(pk=order.pk).status == Order.Status.PLACED


# --- one transaction ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_failure_after_the_stock_update_rolls_everything_back(buyer, api, products, monkeypatch):
    """Real commits (no test transaction around it): the stock update, the order's new state and the
    event are kept or lost together."""
    hammer, bolts = products
    order = placed_order(api, (hammer, 2), (bolts, 5))
    before = snapshot()

    def fail(envelope):
        raise RuntimeError("the outbox write failed")

    monkeypatch.setattr(services, "enqueue_event", fail)
    with pytest.raises(RuntimeError, match="outbox"):
        services.order_cancel(order_id=order.pk, buyer=buyer, cancelled_by="buyer", correlation_id="test")

    assert snapshot() == before
    assert stock_of(hammer, bolts) == [8, 15]
    assert Order.objects.filter(pk=order.pk).values_list("status", "cancelled_at").get() == ("placed", None)
    assert cancelled_events() == []

    monkeypatch.undo()  # and a later attempt cancels it as if nothing had happened
    assert cancel(api, order.pk).status_code == 200
    assert stock_of(hammer, bolts) == [10, 20]
    assert len(cancelled_events()) == 1


# --- races ----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_many_cancels_of_one_order_at_once_restore_its_stock_once(buyer, client_for, products):
    hammer, bolts = products
    order = placed_order(client_for(buyer), (hammer, 2), (bolts, 5))
    clients = [client_for(buyer) for _ in range(12)]

    responses = run_concurrently([lambda client=client: cancel(client, order.pk) for client in clients])

    assert outcomes(responses) == {200: 12}
    assert len({json.dumps(response.json(), sort_keys=True) for response in responses}) == 1
    assert stock_of(hammer, bolts) == [10, 20]
    assert len(cancelled_events(order.pk)) == 1


@pytest.mark.django_db(transaction=True)
def test_cancels_racing_new_orders_for_the_same_stock_never_oversell_nor_deadlock(client_for):
    """Cancels (twice each, by the buyer) of orders for two products, and new orders for the same
    products listing them in either order, all at once. Afterwards every unit is accounted for:
    stock = initial - placed + restored, never below zero."""
    initial = 12
    products = ProductFactory.create_batch(2, stock=initial)
    first, second = products
    to_cancel = []
    for _ in range(3):  # 3 x (2 + 1) units: 6 and 3 left
        buyer = BuyerFactory()
        to_cancel.append((client_for(buyer), placed_order(client_for(buyer), (first, 2), (second, 1))))
    cancels = [lambda client=client, order=order: cancel(client, order.pk) for client, order in to_cancel * 2]
    lines = ((first, 2), (second, 2))
    clients = [client_for(buyer) for buyer in BuyerFactory.create_batch(16)]
    new_orders = [  # half of them list the products in reverse
        lambda client=client, lines=lines if index % 2 else lines[::-1]: place(client, *lines)
        for index, client in enumerate(clients)
    ]

    responses = run_concurrently(cancels + new_orders)

    assert outcomes(responses[: len(cancels)]) == {200: len(cancels)}
    order_outcomes = outcomes(responses[len(cancels) :])
    assert set(order_outcomes) <= {201, 409}, order_outcomes
    assert order_outcomes[201] >= 3  # what was left before, at the least
    placed = OrderLine.objects.values("product").annotate(units=Sum("quantity"))
    placed = {row["product"]: row["units"] for row in placed}
    restored = OrderLine.objects.filter(order__status="cancelled").values("product").annotate(units=Sum("quantity"))
    restored = {row["product"]: row["units"] for row in restored}
    assert restored == {first.pk: 6, second.pk: 3}
    for product in products:
        product.refresh_from_db()
        assert product.stock == initial - placed[product.pk] + restored[product.pk] >= 0
    assert len(cancelled_events()) == 3
    assert OutboxEvent.objects.filter(event_type="order.placed").count() == Order.objects.count()


# --- the admin action -----------------------------------------------------------------------------


def staff_client(client, *permissions: str):
    user = BuyerFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="orders", codename__in=permissions))
    client.force_login(user)
    return client


def run_action(client, orders: list[Order]):
    return client.post(
        CHANGELIST_URL,
        {"action": "cancel_orders", "_selected_action": [order.pk for order in orders]},
        follow=True,
    )


def test_staff_with_the_permission_cancel_orders_and_hear_about_each(client, api, products):
    hammer, bolts = products
    placed = placed_order(api, (hammer, 2), (bolts, 5))
    already = placed_order(api, (hammer, 1))
    cancel(api, already.pk)
    shipped = placed_order(api, (bolts, 1))
    Order.objects.filter(pk=shipped.pk).update(status="shipped")
    staff = staff_client(client, "view_order", "cancel_order")
    assert "cancel_orders" in staff.get(CHANGELIST_URL).content.decode()

    response = run_action(staff, [placed, already, shipped])

    assert response.status_code == 200
    reported = [str(message) for message in response.context["messages"]]
    assert reported == [
        f"Cancelled, stock restored: order #{placed.pk}.",
        f"Already cancelled, left as they were: order #{already.pk}.",
        f"Not cancellable, only a placed order is: order #{shipped.pk} (shipped).",
    ]
    assert stock_of(hammer, bolts) == [10, 19]  # the shipped order's unit stays taken
    assert Order.objects.get(pk=placed.pk).status == Order.Status.CANCELLED
    assert Order.objects.get(pk=shipped.pk).status == "shipped"
    assert [event.envelope["data"]["cancelled_by"] for event in cancelled_events(placed.pk)] == ["staff"]
    assert len(cancelled_events(already.pk)) == 1  # the buyer's, none from staff
    assert validate_envelope(cancelled_events(placed.pk)[0].envelope)


def test_staff_without_the_permission_cannot_cancel(client, api, products):
    order = placed_order(api, (products[0], 2))
    staff = staff_client(client, "view_order", "change_order")
    assert "cancel_orders" not in staff.get(CHANGELIST_URL).content.decode()
    before = snapshot()

    run_action(staff, [order])

    assert snapshot() == before
    assert Order.objects.get(pk=order.pk).status == Order.Status.PLACED
