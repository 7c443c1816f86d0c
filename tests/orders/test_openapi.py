import io
import json
import re

import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from marketplace.problems import PROBLEM_CONTENT_TYPE

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
    assert set(schema["paths"]) == {"/api/products/", "/api/orders/", "/api/orders/{order_id}/"}


def test_placing_an_order_documents_every_outcome(schema):
    operation = schema["paths"]["/api/orders/"]["post"]

    responses = operation["responses"]
    assert set(responses) == {"201", "400", "401", "409", "413", "422"}
    assert responses["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OrderOutput"}
    for status in ("400", "401", "409", "413", "422"):
        assert list(responses[status]["content"]) == [PROBLEM_CONTENT_TYPE], status
    assert responses["409"]["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"].endswith("/InsufficientStockProblem")
    assert "Idempotency-Key" in [parameter["name"] for parameter in operation["parameters"]]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/OrderInputRequest")


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
