"""The Content Security Policy in Chromium: the API docs pages render under it, and what it blocks
does show in the console log that every browser test checks (conftest.py)."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import csp_violations


def test_swagger_ui_and_redoc_render_within_the_policy(transactional_db, live_server, browser):
    browser.get(f"{live_server.url}/api/docs/")
    WebDriverWait(browser, 15).until(lambda _: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {element.text for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert "/api/orders/" in paths

    browser.get(f"{live_server.url}/api/redoc/")
    WebDriverWait(browser, 15).until(lambda _: browser.find_elements(By.CSS_SELECTOR, "h1"))
    assert browser.find_element(By.CSS_SELECTOR, "h1").text.startswith("marketplace API")
    # Redoc's search runs in a Web Worker started from a blob: URL, its styles are its own.
    browser.find_element(By.CSS_SELECTOR, "input[placeholder='Search...']").send_keys("order")
    results = "[data-role='search:results'] [role=menuitem]"
    WebDriverWait(browser, 15).until(lambda _: browser.find_elements(By.CSS_SELECTOR, results))
    assert "Place an order" in browser.find_element(By.CSS_SELECTOR, "[data-role='search:results']").text


def test_what_the_policy_blocks_shows_in_the_console_log(transactional_db, live_server, browser):
    """Were this log not read, the check every browser test makes would pass whatever happened."""
    browser.get(f"{live_server.url}/admin/login/")
    browser.execute_script(
        "const script = document.createElement('script');"
        "script.textContent = 'window.injected = true';"
        "document.head.appendChild(script);"
    )

    assert browser.execute_script("return window.injected === undefined")
    [violation] = csp_violations(browser)
    assert "Content Security Policy directive" in violation
    assert "script-src" in violation
