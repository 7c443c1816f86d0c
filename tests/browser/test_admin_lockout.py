"""Login lockout in a real browser: repeated wrong passwords lock the operator out, the right one is
then refused too, a colleague still logs in from the same browser, and once an operator lifts
the lockout (manage.py axes_reset_username) the right password works again."""

from __future__ import annotations

from django.core.management import call_command
from selenium.webdriver.common.by import By

# The HTTP status of the page shown (Navigation Timing).
STATUS = "return performance.getEntriesByType('navigation')[0].responseStatus"


def _log_in(browser, live_server, username: str, password: str) -> None:
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def _locked_out(browser) -> bool:
    return bool(browser.find_elements(By.ID, "login-locked-out"))


def _logged_in_as(browser) -> str:
    """The username the admin's header welcomes (as written, before the CSS upper-cases it)."""
    return browser.find_element(By.CSS_SELECTOR, "#user-tools strong").get_attribute("textContent")


def test_repeated_failures_lock_an_operator_out_until_the_lockout_is_lifted(
    transactional_db, live_server, browser, operator, django_user_model, settings
):
    colleague = django_user_model.objects.create_user("colleague", password="colleague-password", is_staff=True)

    for attempt in range(1, settings.AXES_FAILURE_LIMIT):
        _log_in(browser, live_server, "operator", f"guess-{attempt}")
        assert "Please enter the correct username and password" in browser.find_element(By.CLASS_NAME, "errornote").text
    _log_in(browser, live_server, "operator", "one-guess-too-many")

    notice = browser.find_element(By.ID, "login-locked-out").text
    assert notice == "Too many failed logins for operator from your address."
    assert browser.execute_script(STATUS) == 429

    # The right password is refused as well, and nothing is logged in.
    _log_in(browser, live_server, "operator", "operator-password")
    assert _locked_out(browser)
    browser.get(f"{live_server.url}/admin/")
    assert "/admin/login/" in browser.current_url

    # The lockout is the operator's, from this address: a colleague logs in from the same browser.
    _log_in(browser, live_server, colleague.username, "colleague-password")
    assert _logged_in_as(browser) == "colleague"
    browser.find_element(By.CSS_SELECTOR, "#logout-form button").click()

    call_command("axes_reset_username", "operator")

    _log_in(browser, live_server, "operator", "operator-password")
    assert _logged_in_as(browser) == "operator"
    assert browser.execute_script(STATUS) == 200
