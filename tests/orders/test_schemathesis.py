"""The API keeps the contract its OpenAPI schema states: Schemathesis fuzzes it with every check on
(Schemathesis's default in code, as ``st run --checks all``), and finds nothing.

Against pytest-django's live server, a real HTTP server in this process (the whole middleware and
URL stack, Django's own 404 and 500 pages included), under DEBUG as in development, where those
pages differ most from the API's. One test per operation runs the examples, coverage (boundary and
invalid values) and fuzzing phases; one more runs the stateful phase: sequences of calls following
the links Schemathesis infers from ``Location`` (place an order, then read it).

The same from a shell, against ``manage.py runserver``:

    st run http://127.0.0.1:8000/api/schema/ --checks all -H "Authorization: Token <a buyer's key>"

Run so, it reports schema-valid orders refused, rightly, for state the schema cannot describe: a
product id that does not exist (400), an Idempotency-Key drawn twice with two bodies (422). Here
generated orders name real products (``name_existing_products``), and each comes from a new buyer
or, within a stateful scenario, with a new key.
"""

import base64
import copy
import re
import uuid

import hypothesis
import pytest
import requests
import schemathesis
from django.conf import settings as django_settings
from django.test import Client, override_settings

from api_tokens.services import api_token_issue
from orders.apis import IDEMPOTENCY_KEY_PATTERN, MAX_IDEMPOTENCY_KEY_LENGTH
from orders.filters import MAX_ID
from tests.factories import BuyerFactory, ProductFactory, SellerFactory, token_for

# Per operation and fuzzing phase; the examples and coverage phases add their own, bounded, cases.
MAX_EXAMPLES = 30
STATEFUL_SCENARIOS = 15
FUZZ_SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,  # no .hypothesis/ directory: every run draws afresh
    # Function-scoped fixtures are set up once per test, not per example: the examples only need
    # the products and the buyer's orders to exist.
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)


def served_schema() -> dict:
    """What /api/schema/ serves. Read at collection, when Schemathesis makes a test of each operation,
    so before the live server starts: from the same code, through Django's test client.
    (``schemathesis.pytest.from_fixture``, which would read it from the live server, fails on
    pytest 9.2: it sets ``Node._nodeid``, which pytest no longer has.)"""
    # A host from the default ALLOWED_HOSTS: pytest-django adds "testserver" only when tests start.
    # No rate limit: its counts live in the database, which is not there yet.
    with override_settings(REST_FRAMEWORK={**django_settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}):
        response = Client(HTTP_HOST="localhost").get("/api/schema/", {"format": "json"})
    assert response.status_code == 200, response.content
    return response.json()


schema = schemathesis.openapi.from_dict(served_schema())


@pytest.fixture
def product_ids(live_server, settings) -> list[int]:
    """As many products as an order may have lines, so that each line of a generated order can name
    a different one (a product twice is a 400 the schema cannot express), with stock for any order."""
    seller = SellerFactory()
    ProductFactory(seller=seller, stock=0)  # so that ?in_stock=false finds something
    return [product.pk for product in ProductFactory.create_batch(settings.ORDER_MAX_LINES, seller=seller, stock=10**6)]


@pytest.fixture
def shopper(live_server, product_ids) -> tuple[str, list[int]]:
    """A buyer's token and the orders they placed (through the API), for the list and the detail."""
    token = token_for(BuyerFactory())
    order_ids = []
    for product_id in product_ids[:3]:
        response = requests.post(
            f"{live_server.url}/api/orders/",
            json={"lines": [{"product": product_id, "quantity": 1}]},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        order_ids.append(response.json()["id"])
    return token, order_ids


def name_existing_products(body, product_ids: list[int]):
    """The body with each line's product id, where it is one (an integer from 1), replaced by a
    product that exists, a different one per line: the order is then placed (201), or refused for
    what the fuzzer meant to break."""
    if not (isinstance(body, dict) and isinstance(body.get("lines"), list)):
        return body
    body = copy.deepcopy(body)
    for index, line in enumerate(body["lines"]):
        if isinstance(line, dict) and type(line.get("product")) is int and line["product"] >= 1:
            line["product"] = product_ids[index % len(product_ids)]
    return body


def name_an_existing_order(path_parameters: dict, order_ids: list[int]) -> dict:
    """A valid ``order_id`` becomes one of the buyer's orders (200); an invalid one stays (404)."""
    order_id = path_parameters.get("order_id")
    if type(order_id) is int and 1 <= order_id <= MAX_ID:
        return {**path_parameters, "order_id": order_ids[order_id % len(order_ids)]}
    return path_parameters


def valid_idempotency_key(headers: dict | None) -> bool:
    key = (headers or {}).get("Idempotency-Key")
    return (
        isinstance(key, str)
        and len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        and bool(re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key))
    )


def authorized(token: str) -> dict:
    return {"Authorization": f"Token {token}"}


PASSWORD = "fuzzing-password"
TOKENS_PATH = "/api/tokens/"


def with_password(buyer) -> dict:
    """The buyer's password as HTTP Basic credentials, which issuing a token takes."""
    buyer.set_password(PASSWORD)
    buyer.save()
    return {"Authorization": "Basic " + base64.b64encode(f"{buyer.username}:{PASSWORD}".encode()).decode()}


def token_case_credentials(case) -> dict:
    """A new buyer for each call of the token API, so that a revocation never takes the token the
    other calls use: a password to issue a token; else a token, and a valid ``token_id`` becomes
    that token's id (204), an invalid one stays (404)."""
    buyer = BuyerFactory()
    if case.method.upper() == "POST":
        return with_password(buyer)
    issued = api_token_issue(user=buyer)
    token_id = (case.path_parameters or {}).get("token_id")
    if type(token_id) is int and 1 <= token_id <= MAX_ID:
        case.path_parameters = {**case.path_parameters, "token_id": issued.api_token.pk}
    return authorized(issued.token)


@schema.parametrize()
@hypothesis.settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES)
def test_every_operation_keeps_the_contract_of_the_schema(case, live_server, settings, product_ids, shopper):
    settings.DEBUG = True  # the development default (DJANGO_DEBUG), where the findings of issue 9 were
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # one password per call
    token, order_ids = shopper
    if case.path.startswith(TOKENS_PATH):
        case.call_and_validate(base_url=live_server.url, headers=token_case_credentials(case), timeout=10)
        return
    # Real products and orders, and a new buyer for each order placed: an Idempotency-Key is per
    # buyer, and the fuzzer drawing one twice with two bodies is a 422.
    if case.method.upper() == "POST":
        token = token_for(BuyerFactory())
        case.body = name_existing_products(case.body, product_ids)
    if case.path_parameters:
        case.path_parameters = name_an_existing_order(case.path_parameters, order_ids)

    case.call_and_validate(base_url=live_server.url, headers=authorized(token), timeout=10)


def test_sequences_of_calls_keep_the_contract_of_the_schema(live_server, settings, product_ids):
    """Adds the checks only a sequence can make: an order just placed can be read, and so on."""
    settings.DEBUG = True
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

    class Scenario(schema.as_state_machine()):
        def setup(self):
            # One buyer per scenario: the orders it places are its own to read, the tokens it
            # issues (with its password) its own to revoke.
            buyer = BuyerFactory()
            self.token = token_for(buyer)
            self.password = with_password(buyer)

        def before_call(self, case):
            # Real products, and a key of its own for each order: the scenario's buyer is the same
            # from one call to the next, so that it can read the orders it placed.
            if case.method.upper() == "POST":
                case.body = name_existing_products(case.body, product_ids)
                if valid_idempotency_key(case.headers):
                    case.headers = {**case.headers, "Idempotency-Key": uuid.uuid4().hex}

        def get_call_kwargs(self, case):
            issuing = case.method.upper() == "POST" and case.path == TOKENS_PATH
            headers = self.password if issuing else authorized(self.token)
            return {"base_url": live_server.url, "headers": headers, "timeout": 10}

    Scenario.run(settings=hypothesis.settings(FUZZ_SETTINGS, max_examples=STATEFUL_SCENARIOS, stateful_step_count=5))
