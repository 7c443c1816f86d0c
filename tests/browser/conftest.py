"""A real headless Chromium (the OS packages chromium and chromium-driver, which bin/test installs
when it may), driven by Selenium against pytest-django's live server.

Every test that uses the browser also fails when Chromium logged a Content Security Policy
violation on any page it visited (pytest_runtest_call below): a page our policy breaks fails the
test that visits it, whatever that test asserts.
"""

from __future__ import annotations

import shutil

import pytest

# How Chromium's console words what a Content Security Policy blocked: "Executing inline script
# violates the following Content Security Policy directive ...", "Loading the image ... violates
# ..."; older releases say "Refused to ...".
CSP_VIOLATION_MARKERS = ("Content Security Policy", "Refused to")


def _chromedriver() -> str | None:
    return shutil.which("chromedriver")


@pytest.fixture
def browser():
    driver_path = _chromedriver()
    if driver_path is None:
        pytest.skip(
            "chromedriver is not installed (apt-get install chromium chromium-driver; bin/test does it as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # Console messages of every level, CSP violations among them, for csp_violations().
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def csp_violations(driver) -> list[str]:
    """The CSP violations Chromium logged since the last call (reading the log empties it)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if any(marker in entry["message"] for marker in CSP_VIOLATION_MARKERS)
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Once a browser test's own assertions passed: no CSP violation on any page it visited."""
    result = yield
    driver = item.funcargs.get("browser")
    if driver is not None:
        violations = csp_violations(driver)
        assert not violations, "Content Security Policy violations:\n" + "\n".join(violations)
    return result


@pytest.fixture
def operator(django_user_model, settings):
    """A staff user who may view and replay failed events, and view orders and outbox events."""
    from django.contrib.auth.models import Permission

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = django_user_model.objects.create_user("operator", "ops@example.com", "operator-password", is_staff=True)
    codenames = [
        "view_failedevent", "replay_failedevent", "view_outboxevent", "view_order", "view_notification",
        "view_customerprofile", "view_user", "view_seller",
    ]  # fmt: skip
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user
