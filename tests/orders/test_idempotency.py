import uuid

import pytest

from orders.models import IdempotencyKey, Order
from tests.factories import BuyerFactory, ProductFactory
from tests.support.orders import assert_problem, place, run_concurrently, snapshot


@pytest.fixture
def key():
    return str(uuid.uuid4())


@pytest.mark.django_db
def test_repeating_a_request_returns_the_same_order_and_creates_nothing(api, key):
    hammer, bolts = ProductFactory(stock=10), ProductFactory(stock=10)
    first = place(api, (hammer, 2), (bolts, 1), headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.content
    after_first = snapshot()

    again = place(api, (hammer, 2), (bolts, 1), headers={"Idempotency-Key": key})

    assert again.status_code == 201, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again["Location"] == first["Location"]
    assert again.json() == first.json()
    assert snapshot() == after_first
    assert after_first["stock"] == {hammer.pk: 8, bolts.pk: 9}
    assert after_first["orders"] == after_first["outbox_events"] == after_first["idempotency_keys"] == 1


@pytest.mark.django_db
def test_a_first_request_is_not_marked_replayed(api, key):
    response = place(api, (ProductFactory(), 1), headers={"Idempotency-Key": key})

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response


@pytest.mark.django_db
def test_the_same_lines_in_another_order_are_the_same_request(api, key):
    hammer, bolts = ProductFactory(), ProductFactory()
    first = place(api, (hammer, 2), (bolts, 1), headers={"Idempotency-Key": key})

    again = place(api, (bolts, 1), (hammer, 2), headers={"Idempotency-Key": key})

    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert Order.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("change", ["quantity", "product", "extra line"])
def test_the_same_key_with_a_different_body_is_a_422(api, key, change):
    hammer, bolts = ProductFactory(), ProductFactory()
    first = place(api, (hammer, 2), headers={"Idempotency-Key": key})
    before = snapshot()
    lines = {
        "quantity": [(hammer, 3)],
        "product": [(bolts, 2)],
        "extra line": [(hammer, 2), (bolts, 1)],
    }[change]

    response = place(api, *lines, headers={"Idempotency-Key": key})

    body = assert_problem(response, 422, "idempotency-key-reused")
    assert body["order"] == first.json()["id"]
    assert snapshot() == before


@pytest.mark.django_db
def test_the_same_key_from_another_buyer_places_an_independent_order(api, client_for, key):
    product = ProductFactory(stock=10)
    mine = place(api, (product, 1), headers={"Idempotency-Key": key})
    other_buyer = BuyerFactory()

    theirs = place(client_for(other_buyer), (product, 1), headers={"Idempotency-Key": key})

    assert theirs.status_code == 201, theirs.content
    assert "Idempotent-Replayed" not in theirs
    assert theirs.json()["id"] != mine.json()["id"]
    assert Order.objects.get(pk=theirs.json()["id"]).buyer == other_buyer
    assert IdempotencyKey.objects.filter(key=key).count() == 2
    product.refresh_from_db()
    assert product.stock == 8


@pytest.mark.django_db
def test_a_rejected_request_does_not_use_up_its_key(api, key):
    product = ProductFactory(stock=1)
    refused = place(api, (product, 2), headers={"Idempotency-Key": key})
    assert refused.status_code == 409
    product.stock = 5
    product.save()

    retried = place(api, (product, 2), headers={"Idempotency-Key": key})

    assert retried.status_code == 201, retried.content
    assert "Idempotent-Replayed" not in retried


@pytest.mark.django_db
def test_without_a_key_a_repeat_is_a_new_order(api):
    product = ProductFactory(stock=10)

    first, second = place(api, (product, 1)), place(api, (product, 1))

    assert first.json()["id"] != second.json()["id"]
    assert IdempotencyKey.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_place_one_order(client_for, buyer, key):
    product = ProductFactory(stock=100)
    clients = [client_for(buyer) for _ in range(8)]

    responses = run_concurrently(
        [lambda client=client: place(client, (product, 3), headers={"Idempotency-Key": key}) for client in clients]
    )

    assert [response.status_code for response in responses] == [201] * 8
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(response.has_header("Idempotent-Replayed") for response in responses) == 7
    assert Order.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    product.refresh_from_db()
    assert product.stock == 97
