"""Login lockout (django-axes; settings, "Login lockout"): per username and client address, behind
the proxy too, lifted by the cool-off or by an operator. tests/browser/test_admin_lockout.py
walks the same through Chromium."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.db.models import F

pytestmark = pytest.mark.django_db

LOGIN_URL = "/admin/login/?next=/admin/"
PASSWORD = "right-password"
ATTACKER, OPERATOR_DESK = "203.0.113.9", "198.51.100.7"


@pytest.fixture
def staff(django_user_model, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return django_user_model.objects.create_user("ops", password=PASSWORD, is_staff=True)


def log_in(client, username: str, password: str, address: str, **headers: str):
    return client.post(LOGIN_URL, {"username": username, "password": password}, REMOTE_ADDR=address, **headers)


def fail_until_locked(client, settings, username: str = "ops", address: str = ATTACKER, **headers: str):
    responses = [log_in(client, username, "guess", address, **headers) for _ in range(settings.AXES_FAILURE_LIMIT)]
    assert [response.status_code for response in responses[:-1]] == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    return responses[-1]


def test_the_last_allowed_failure_locks_the_username_out_from_that_address(client, staff, settings):
    locked = fail_until_locked(client, settings)

    assert locked.status_code == 429
    assert locked["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert locked["Content-Type"].startswith("text/html")
    page = locked.content.decode()
    assert "Too many failed logins for <strong>ops</strong> from your address." in page
    assert "until 15 minutes have passed without another attempt" in page


def test_the_right_password_is_refused_from_there_but_not_from_elsewhere_nor_for_another_user(
    client, staff, settings, django_user_model
):
    other = django_user_model.objects.create_user("colleague", password=PASSWORD, is_staff=True)
    fail_until_locked(client, settings)

    assert log_in(client, "ops", PASSWORD, ATTACKER).status_code == 429
    assert "_auth_user_id" not in client.session
    assert log_in(client, other.username, PASSWORD, ATTACKER).status_code == 302
    client.logout()
    assert log_in(client, "ops", PASSWORD, OPERATOR_DESK).status_code == 302


def test_the_lockout_ends_with_the_cool_off(client, staff, settings):
    fail_until_locked(client, settings)
    # The cool-off has passed since the last failure.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME)

    assert log_in(client, "ops", PASSWORD, ATTACKER).status_code == 302


@pytest.mark.parametrize(
    ("command", "arguments"),
    [("axes_reset_username", ["ops"]), ("axes_reset_ip_username", [ATTACKER, "ops"]), ("axes_reset", [])],
)
def test_an_operator_lifts_a_lockout(client, staff, settings, command, arguments):
    fail_until_locked(client, settings)

    call_command(command, *arguments)

    assert log_in(client, "ops", PASSWORD, ATTACKER).status_code == 302


def test_a_success_clears_the_failures_counted_so_far(client, staff, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "ops", "guess", ATTACKER)
    assert log_in(client, "ops", PASSWORD, ATTACKER).status_code == 302
    client.logout()

    assert log_in(client, "ops", "guess", ATTACKER).status_code == 200, "one failure, not the limit"


def test_behind_the_proxy_the_client_is_the_address_it_appended(client, staff, settings):
    """A client that forges X-Forwarded-For entries of its own is still counted as itself."""
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    forged = [f"192.0.2.{n}, {ATTACKER}" for n in range(settings.AXES_FAILURE_LIMIT)]
    for forwarded in forged:
        log_in(client, "ops", "guess", proxy, HTTP_X_FORWARDED_FOR=forwarded)

    assert log_in(client, "ops", PASSWORD, proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.99, {ATTACKER}").status_code == 429
    assert log_in(client, "ops", PASSWORD, proxy, HTTP_X_FORWARDED_FOR=OPERATOR_DESK).status_code == 302
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_an_ipv6_client_is_counted_by_its_64_whose_every_address_it_may_use(client, staff, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "ops", "guess", f"2001:db8:1:2::{n + 1:x}")

    assert log_in(client, "ops", PASSWORD, "2001:db8:1:2:ffff:ffff:ffff:ffff").status_code == 429
    assert log_in(client, "ops", PASSWORD, "2001:db8:1:3::1").status_code == 302


def test_the_stored_attempts_keep_no_password_nor_csrf_token(client, staff, settings):
    client = type(client)(enforce_csrf_checks=True)
    client.get(LOGIN_URL)
    token = client.cookies["csrftoken"].value
    client.post(LOGIN_URL, {"username": "ops", "password": "secret-guess", "csrfmiddlewaretoken": token})

    [attempt] = AccessAttempt.objects.all()
    assert "secret-guess" not in attempt.post_data
    assert token not in attempt.post_data


def test_the_test_clients_login_and_force_login_still_work(client, staff):
    assert client.login(username="ops", password=PASSWORD)
    assert client.get("/admin/").status_code == 200
    client.logout()
    assert not client.login(username="ops", password="guess")

    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
