"""The Content Security Policy each kind of page is served with (django-csp; settings, "Content
Security Policy"). tests/browser/ checks that Chromium logs no violation on the pages it visits."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_the_admin_allows_scripts_and_styles_from_its_own_origin_only(admin_client):
    policy = directives(admin_client.get("/admin/events/failedevent/"))

    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]


def test_the_login_and_lockout_pages_have_it_too(client, settings):
    assert directives(client.get("/admin/login/"))["script-src"] == ["'self'"]
    for _ in range(settings.AXES_FAILURE_LIMIT):
        locked = client.post("/admin/login/", {"username": "someone", "password": "guess"})

    assert locked.status_code == 429
    assert directives(locked)["script-src"] == ["'self'"]


def test_swagger_ui_runs_its_inline_script_by_nonce_only(client):
    response = client.get("/api/docs/")
    policy = directives(response)
    [nonce] = [value for value in policy["script-src"] if value.startswith("'nonce-")]

    assert policy["script-src"] == ["'self'", nonce]
    assert policy["style-src"] == ["'self'", nonce]
    assert policy["img-src"] == ["'self'", "data:"]
    nonce_value = nonce.removeprefix("'nonce-").removesuffix("'")
    assert response.content.decode().count(f'nonce="{nonce_value}"') == 2  # its <style> and <script>


def test_redoc_has_no_inline_script_but_its_own_styles(client):
    policy = directives(client.get("/api/redoc/"))

    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]
    assert policy["worker-src"] == ["'self'", "blob:"]
    assert "fonts.googleapis.com" not in client.get("/api/redoc/").content.decode()


def test_the_browsable_api_allows_style_attributes_only(client):
    for response in (client.get("/api/products/", HTTP_ACCEPT="text/html"), client.get("/api-auth/login/")):
        policy = directives(response)
        assert policy["script-src"] == ["'self'"]
        assert policy["style-src"] == ["'self'"]
        assert policy["style-src-attr"] == ["'unsafe-inline'"]


def test_json_responses_are_served_with_it_too(client):
    """Harmless there, and nothing to remember when an endpoint starts answering HTML."""
    assert directives(client.get("/api/products/"))["default-src"] == ["'self'"]
