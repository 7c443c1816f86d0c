"""Flower as the operator meets it (marketplace/metrics/flower.py): its Broker tab shows this
deployment's queues once each, dead-letter queues included, and its start logs no inspection
warnings while no worker is up yet; every page keeps to our Content Security Policy."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlparse

import httpx
import pytest
from selenium.webdriver.common.by import By

from marketplace.events import topology
from tests.observability.test_flower import OURS, flower
from tests.support.broker import add_vhost, delete_vhost
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker]

CREDENTIALS = ("ops", "flower-s3cret")


@pytest.fixture
def other_deployment():
    """Another deployment's vhost on the same RabbitMQ, with queues of the same names."""
    from kombu import Connection

    vhost = f"marketplace-other-deployment-test-{uuid.uuid4().hex[:10]}"  # concurrent runs share the broker
    with Connection(add_vhost(vhost)) as conn:
        topology.declare(conn)
    yield vhost
    delete_vhost(vhost)


def test_flowers_broker_tab_lists_this_deployments_queues_dead_letters_included(
    broker_url, other_deployment, tmp_path, browser
):
    user, password = CREDENTIALS
    environment = {
        "FLOWER_BASIC_AUTH": f"{user}:{password}",
        "FLOWER_BROKER_API": "http://guest:guest@127.0.0.1:15672/api/",
    }
    with flower(OURS, broker_url, tmp_path, **environment) as (url, _):
        host = urlparse(url).netloc
        browser.get(f"http://{user}:{password}@{host}/broker")
        eventually(lambda: browser.find_elements(By.CSS_SELECTOR, "table tbody tr"), timeout=15, message="queues")
        names = [
            row.find_element(By.TAG_NAME, "td").text for row in browser.find_elements(By.CSS_SELECTOR, "table tbody tr")
        ]
        # Startup: no worker runs here, and that is said once, not warned per inspect method.
        log = (tmp_path / "flower.log").read_text()
        assert httpx.get(f"{url}/healthcheck").status_code == 200

    assert len(names) == len(set(names)), f"each queue once: {names}"
    for subscriber in topology.SUBSCRIBERS:
        assert subscriber.queue_name in names
        assert subscriber.dead_letter_queue_name in names
    assert topology.RECORDER_QUEUE_NAME in names
    assert not re.findall(r"WARNING.*Inspect method", log), log


def test_flowers_pages_keep_to_our_content_security_policy(broker_url, tmp_path, browser, start_worker):
    """Each page sends the policy, and Chromium refuses nothing on any of them (conftest.py): not
    the inline script of the Workers page, nor the styled column of a worker's page."""
    worker = start_worker("order_confirmation")
    user, password = CREDENTIALS
    with flower(OURS, broker_url, tmp_path, FLOWER_BASIC_AUTH=f"{user}:{password}") as (url, _):
        policy = httpx.get(f"{url}/workers", auth=CREDENTIALS).headers["Content-Security-Policy"]
        host = urlparse(url).netloc
        for path, shows in [
            ("/workers", "table#workers-table"),
            ("/tasks", "table#tasks-table"),
            ("/broker", "table tbody tr"),
            (f"/worker/{worker.hostname}", "#tab-pool"),
        ]:
            browser.get(f"http://{user}:{password}@{host}{path}")
            eventually(lambda shows=shows: browser.find_elements(By.CSS_SELECTOR, shows), timeout=15, message=path)
        # The Workers page's scripts ran: its table lists the worker, linked to its page.
        browser.get(f"http://{user}:{password}@{host}/workers")
        eventually(lambda: worker.hostname in _listed_workers(browser), timeout=15, message="the worker listed")

    assert "script-src 'self' 'sha256-" in policy
    assert "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy


def _listed_workers(browser) -> list[str]:
    return [link.get_attribute("textContent") for link in browser.find_elements(By.CSS_SELECTOR, "a.worker-name-link")]
