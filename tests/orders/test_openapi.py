import io
import json
import re

import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from marketplace.problems import PROBLEM_CONTENT_TYPE
from orders.apis import IDEMPOTENCY_KEY_PATTERN, MAX_IDEMPOTENCY_KEY_LENGTH
from orders.serializers import MONEY_PATTERN

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def test_the_generated_schema_is_valid_openapi():
    validate_schema(SchemaGenerator().get_schema(request=None, public=True))


def test_schema_generation_has_no_warnings():
    out = io.StringIO()

    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)

    assert json.loads(out.getvalue())["paths"]


def test_the_served_schema_is_valid_and_public(schema):
    validate_schema(schema)
    # Each operation once: the routes without a trailing slash are not documented twice.
    assert set(schema["paths"]) == {
        "/api/products/",
        "/api/orders/",
        "/api/orders/{order_id}/",
        "/api/orders/{order_id}/cancel/",
        "/api/tokens/",
        "/api/tokens/current/",
        "/api/tokens/{token_id}/",
    }


def test_placing_an_order_documents_every_outcome(schema):
    operation = schema["paths"]["/api/orders/"]["post"]

    responses = operation["responses"]
    assert set(responses) == {"201", "400", "401", "409", "413", "415", "422", "429", "503"}
    assert responses["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OrderOutput"}
    assert responses["201"]["headers"]["Location"]["required"] is True
    for status in ("400", "401", "409", "413", "415", "422", "429", "503"):
        assert list(responses[status]["content"]) == [PROBLEM_CONTENT_TYPE], status
    assert responses["409"]["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"].endswith("/InsufficientStockProblem")
    assert "Idempotency-Key" in [parameter["name"] for parameter in operation["parameters"]]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/OrderInputRequest")


def test_the_idempotency_key_constraints_are_documented(schema):
    """An empty key is a 400: the schema says so, so that neither a fuzzer nor Swagger sends one."""
    [parameter] = [p for p in schema["paths"]["/api/orders/"]["post"]["parameters"] if p["name"] == "Idempotency-Key"]

    assert parameter["in"] == "header"
    assert parameter["schema"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    }


def test_every_operation_has_a_summary_and_documents_a_503_with_retry_after(schema):
    operations = [operation for path in schema["paths"].values() for operation in path.values()]

    assert len(operations) == 10
    for operation in operations:
        assert operation["summary"], operation["operationId"]
        unavailable = operation["responses"]["503"]
        assert list(unavailable["content"]) == [PROBLEM_CONTENT_TYPE], operation["operationId"]
        assert unavailable["headers"]["Retry-After"]["required"] is True
        assert unavailable["headers"]["Retry-After"]["schema"]["type"] == "integer"


def test_every_operation_documents_a_429_with_retry_after(schema):
    """Every view counts requests without valid credentials per client address (marketplace/ratelimits/)."""
    operations = [operation for path in schema["paths"].values() for operation in path.values()]

    for operation in operations:
        limited = operation["responses"]["429"]
        assert limited["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"].endswith("/RateLimitedProblem")
        assert limited["headers"]["Retry-After"]["required"] is True
        assert limited["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    body = schema["components"]["schemas"]["RateLimitedProblem"]
    assert "retry_after" in body["required"]
    assert "errors" not in body["properties"]


@pytest.mark.parametrize("path", ["/api/orders/", "/api/products/"])
def test_the_page_parameter_and_its_errors_are_documented(schema, path):
    operation = schema["paths"][path]["get"]

    [page] = [parameter for parameter in operation["parameters"] if parameter["name"] == "page"]
    assert page["schema"] == {"type": "integer", "minimum": 1}
    for status in ("400", "404"):
        assert list(operation["responses"][status]["content"]) == [PROBLEM_CONTENT_TYPE], status


def test_the_product_filters_are_documented_as_strict(schema):
    operation = schema["paths"]["/api/products/"]["get"]

    parameters = {parameter["name"]: parameter["schema"] for parameter in operation["parameters"]}
    assert parameters["seller"]["type"] == "integer"
    assert parameters["seller"]["minimum"] == 1
    assert parameters["in_stock"] == {"type": "boolean"}
    assert operation["summary"]


def test_the_order_limits_follow_the_settings(client, settings):
    settings.ORDER_MAX_QUANTITY = 7
    settings.ORDER_MAX_LINES = 3

    components = client.get("/api/schema/", {"format": "json"}).json()["components"]["schemas"]

    lines = components["OrderInputRequest"]["properties"]["lines"]
    assert (lines["minItems"], lines["maxItems"]) == (1, 3)
    quantity = components["OrderLineInputRequest"]["properties"]["quantity"]
    assert (quantity["minimum"], quantity["maximum"]) == (1, 7)


def test_money_is_documented_as_a_string_with_two_decimals(schema):
    components = schema["components"]["schemas"]

    for component, field in [
        ("ProductOutput", "price"),
        ("OrderOutput", "total"),
        ("OrderLineOutput", "unit_price"),
        ("OrderLineOutput", "line_total"),
    ]:
        money = components[component]["properties"][field]
        assert (money["type"], money["pattern"]) == ("string", MONEY_PATTERN), (component, field)


def test_the_order_id_is_documented_as_an_id(schema):
    [order_id] = schema["paths"]["/api/orders/{order_id}/"]["get"]["parameters"]

    assert order_id["schema"]["type"] == "integer"
    assert order_id["schema"]["minimum"] == 1


def test_the_order_list_is_documented_as_paginated(schema):
    operation = schema["paths"]["/api/orders/"]["get"]

    assert operation["operationId"] == "orders_list"
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PaginatedOrderOutputList"
    )


def test_the_order_line_fields_are_documented_as_integers(schema):
    line = schema["components"]["schemas"]["OrderLineInputRequest"]

    assert line["properties"]["product"]["type"] == "integer"
    assert line["properties"]["quantity"]["type"] == "integer"
    assert set(line["required"]) == {"product", "quantity"}


def local_assets_served(client, html: str) -> list[str]:
    """The page's ``src``/``href`` URLs, after checking each one on our own server answers 200."""
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        served.close()
    return assets


def test_swagger_ui_works_offline(client, settings):
    settings.WHITENOISE_USE_FINDERS = True  # serve app static files without collectstatic, as in development

    response = client.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert not re.findall(r'(?:src|href)="(https?:[^"]*)"', html)
    assets = local_assets_served(client, html)
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in assets
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css" in assets
    assert '"/api/schema/"' in html


def test_redoc_scripts_are_served_locally(client, settings):
    """Only its optional web fonts come from the internet; without them the page falls back to local fonts."""
    settings.WHITENOISE_USE_FINDERS = True

    response = client.get("/api/redoc/")

    assert response.status_code == 200
    html = response.content.decode()
    assert not re.findall(r'<script[^>]+src="(https?:[^"]*)"', html)
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in local_assets_served(client, html)


def test_a_token_is_issued_for_a_password_and_managed_with_a_token(schema):
    """Issuing takes HTTP Basic only: a token never gets another token (it could outlive its expiry)."""
    tokens = schema["paths"]["/api/tokens/"]
    operations = [tokens["get"], tokens["delete"], *schema["paths"]["/api/tokens/current/"].values()]
    operations += schema["paths"]["/api/tokens/{token_id}/"].values()

    assert tokens["post"]["security"] == [{"basicAuth": []}]
    assert tokens["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IssuedApiTokenOutput"
    )
    assert tokens["post"]["responses"]["201"]["headers"]["Cache-Control"]["required"] is True
    assert "409" in tokens["post"]["responses"]
    for operation in operations:
        assert operation["security"] == [{"tokenAuth": []}], operation["operationId"]
    assert schema["components"]["securitySchemes"]["tokenAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": 'Token-based authentication with required prefix "Token"',
    }
