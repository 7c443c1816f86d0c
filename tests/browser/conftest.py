"""A real headless Chromium (the OS packages chromium and chromium-driver, which bin/test installs
when it may), driven by Selenium against pytest-django's live server."""

from __future__ import annotations

import shutil

import pytest


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
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


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
