"""The operator console in a real browser: log in, find a failure group, replay it, trace the order."""

from __future__ import annotations

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By

from marketplace.events import topology
from marketplace.events.failure_groups import grouping_fields
from marketplace.events.models import FailedEvent, FailedEventReplay, OutboxEvent
from marketplace.events.outbox import on_commit_publisher
from orders.services import LineRequest, order_place
from tests.factories import BuyerFactory, ProductFactory
from tests.support.broker import purge_subscriber_queues, queue_depth

pytestmark = [pytest.mark.broker]

SELLERS_FAILING = 3


def _order_with_failed_seller_notification(n: int) -> tuple[int, FailedEvent]:
    order = order_place(
        buyer=BuyerFactory(), lines=[LineRequest(ProductFactory().pk, 1)], correlation_id=f"req-{n}"
    ).order
    event = OutboxEvent.objects.get(envelope__data__order_id=order.pk)
    message = f"seller {n} webhook http://127.0.0.1:9/hooks/{n} answered 503"
    exception = "marketplace.events.subscriber.TransientDownstreamError"
    failed = FailedEvent.objects.create(
        subscriber="seller_notification",
        event_id=event.event_id,
        event_type="order.placed",
        payload=event.envelope,
        exception_class=exception,
        exception_message=message,
        traceback="Traceback (most recent call last):\n  " + "x" * 400,
        attempts=4,
        last_failed_at=timezone.now(),
        **grouping_fields(subscriber="seller_notification", exception_class=exception, exception_message=message),
    )
    return order.pk, failed


def test_an_operator_replays_a_failure_group_and_traces_an_order(
    transactional_db, live_server, browser, operator, broker, broker_url
):
    placed = [_order_with_failed_seller_notification(n) for n in range(SELLERS_FAILING)]
    assert on_commit_publisher.flush()
    purge_subscriber_queues(broker_url)  # no worker runs here: only the replays should be queued

    browser.get(f"{live_server.url}/admin/login/?next=/admin/events/failedevent/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("operator-password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # The failed-events list fits 1400 px and leads to the groups.
    assert browser.find_element(By.ID, "result_list")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.find_element(By.ID, "failure-groups-link").click()

    [row] = browser.find_elements(By.CSS_SELECTOR, "tr.failure-group")
    assert "seller <n> webhook http://<n>.<n>.<n>.<n>:<n>/<path> answered <n>" in row.text
    assert f"\n{SELLERS_FAILING}\n" in f"\n{row.text.replace(' ', chr(10))}\n"
    row.find_element(By.CSS_SELECTOR, "a.replay-group").click()

    question = browser.find_element(By.ID, "group-confirm-question").text
    assert f"Replay {SELLERS_FAILING} open failed event(s) of seller_notification" in question
    browser.find_element(By.ID, "confirm-group-action").click()

    assert f"Replayed {SELLERS_FAILING} event(s)" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert set(FailedEvent.objects.values_list("status", flat=True)) == {FailedEvent.Status.REPLAYING}
    assert set(FailedEventReplay.objects.values_list("via", "requested_by__username")) == {("admin-group", "operator")}
    depth = queue_depth(broker, topology.subscriber_named("seller_notification").queue_name)
    assert depth == SELLERS_FAILING, "each event went back to seller_notification's queue only"

    # From a failed event to its trace, and from there to the order.
    order_id, failed = placed[0]
    browser.get(f"{live_server.url}/admin/events/failedevent/{failed.pk}/change/")
    assert "wrapped" in browser.find_element(By.CSS_SELECTOR, ".field-pretty_traceback pre").get_attribute("class")
    browser.find_element(By.LINK_TEXT, "trace").click()
    states = {
        row.get_attribute("data-subscriber"): row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "tr.trace-subscriber")
    }
    assert states["seller_notification"].startswith("replay requested"), states
    assert states["order_confirmation"] == "pending", states  # published; no worker runs in this test
    browser.find_element(By.PARTIAL_LINK_TEXT, f"order #{order_id}").click()
    assert f"/admin/orders/order/{order_id}/change/" in browser.current_url
