"""The operator console in a real browser: log in, find a failure group, replay it and follow the
replay, replay one failed event from its page and from its order's trace, trace the order; on every
page, links readable (WCAG AA contrast) and no text clipped at 1400 px."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from marketplace.events import topology
from marketplace.events.failure_groups import grouping_fields
from marketplace.events.models import FailedEvent, FailedEventReplay, OutboxEvent
from marketplace.events.outbox import on_commit_publisher
from marketplace.events.services import replay_finished
from orders.services import LineRequest, order_place
from tests.factories import BuyerFactory, ProductFactory
from tests.support.broker import purge_subscriber_queues, queue_depth

pytestmark = [pytest.mark.broker]

SELLERS_FAILING = 3
# WCAG 2 AA: 4.5:1, or 3:1 for large text (24 px, or 18.66 px bold: Django's "Django administration").
WCAG_AA, WCAG_AA_LARGE = 4.5, 3.0
# One long "word" (a URL, a base64 header) in a traceback and in the headers: it must wrap.
UNBROKEN = "x" * 400

# Every visible link with text on the page whose colour contrasts less than WCAG AA asks with the
# background it is drawn on (the first ancestor's opaque background colour, else white).
LOW_CONTRAST_LINKS = """
const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
const rgba = (css) => { const v = css.match(/[\\d.]+/g).map(Number); return v.length === 3 ? [...v, 1] : v; };
const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
const background = (element) => {
  for (let node = element; node && node.nodeType === 1; node = node.parentElement) {
    const colour = rgba(getComputedStyle(node).backgroundColor);
    if (colour[3] > 0) return colour;
  }
  return [255, 255, 255, 1];
};
const low = [];
for (const link of document.querySelectorAll("a")) {
  if (!link.offsetParent || !link.textContent.trim()) continue;
  const fg = rgba(getComputedStyle(link).color), bg = background(link);
  const [light, dark] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
  const ratio = (light + 0.05) / (dark + 0.05);
  const style = getComputedStyle(link), size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
  const large = size >= 24 || (bold && size >= 18.66);
  if (ratio < (large ? arguments[1] : arguments[0])) {
    low.push(`${link.textContent.trim()}: ${ratio.toFixed(2)} (${fg} on ${bg})`);
  }
}
return low;
"""

# Every element of the page's content whose content is wider than its box (clipped or spilling).
CLIPPED_TEXT = """
const clipped = [];
for (const element of document.querySelectorAll("#content *")) {
  if (!element.offsetParent || element.clientWidth === 0) continue;
  if (element.scrollWidth > element.clientWidth + 1) {
    clipped.push(`${element.tagName}.${element.className}: ${element.scrollWidth} > ${element.clientWidth}`);
  }
}
return clipped;
"""


def _order_with_failed_seller_notification(n: int) -> tuple[int, FailedEvent]:
    order = order_place(
        buyer=BuyerFactory(), lines=[LineRequest(ProductFactory().pk, 1)], correlation_id=f"req-{n}"
    ).order
    event = OutboxEvent.objects.get(envelope__data__order_id=order.pk)
    message = f"seller {n} webhook http://127.0.0.1:9/hooks/{n} answered 503"
    exception = "marketplace.events.errors.TransientDownstreamError"
    failed = FailedEvent.objects.create(
        subscriber="seller_notification",
        event_id=event.event_id,
        event_type="order.placed",
        payload=event.envelope,
        exception_class=exception,
        exception_message=message,
        traceback=f"Traceback (most recent call last):\n  File {UNBROKEN}\n{exception}: {message}",
        headers={"x-first-death-queue": "marketplace.seller_notification", "x-long": UNBROKEN},
        attempts=4,
        last_failed_at=timezone.now(),
        **grouping_fields(subscriber="seller_notification", exception_class=exception, exception_message=message),
    )
    return order.pk, failed


def _log_in(browser, live_server, next_url: str) -> None:
    browser.get(f"{live_server.url}/admin/login/?next={next_url}")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("operator-password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def _assert_readable(browser) -> None:
    """Links of AA contrast, and no text wider than its box, at 1400 px."""
    assert browser.execute_script("return window.innerWidth") >= 1380
    assert browser.execute_script(LOW_CONTRAST_LINKS, WCAG_AA, WCAG_AA_LARGE) == [], browser.current_url
    assert browser.execute_script(CLIPPED_TEXT) == [], browser.current_url
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def _states(browser) -> dict[str, str]:
    return {
        row.get_attribute("data-subscriber"): row.find_element(By.CSS_SELECTOR, "td.trace-state").text
        for row in browser.find_elements(By.CSS_SELECTOR, "tr.trace-subscriber")
    }


@pytest.mark.long
def test_an_operator_replays_a_failure_group_follows_it_and_traces_an_order(
    transactional_db, live_server, browser, operator, broker, broker_url
):
    placed = [_order_with_failed_seller_notification(n) for n in range(SELLERS_FAILING)]
    assert on_commit_publisher.flush()
    purge_subscriber_queues(broker_url)  # no worker runs here: only the replays should be queued

    _log_in(browser, live_server, "/admin/events/failedevent/")

    # The failed-events list fits 1400 px, is readable, and leads to the groups.
    assert browser.find_element(By.ID, "result_list")
    _assert_readable(browser)
    browser.find_element(By.ID, "failure-groups-link").click()

    _assert_readable(browser)
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr.failure-group")
    assert "seller <n> webhook http://127.0.0.1:9/<path> answered <n>" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".group-count").text == str(SELLERS_FAILING)
    row.find_element(By.CSS_SELECTOR, "a.replay-group").click()

    question = browser.find_element(By.ID, "group-confirm-question").text
    assert f"Replay {SELLERS_FAILING} open failed event(s) of seller_notification" in question
    _assert_readable(browser)
    browser.find_element(By.ID, "confirm-group-action").click()

    # The group's page: the replay is under way, and nothing offers to replay it again.
    # Publishing the replays with confirms can take longer than the implicit wait on a loaded machine.
    messages = WebDriverWait(browser, 30).until(lambda _: browser.find_elements(By.CSS_SELECTOR, "ul.messagelist"))
    assert f"Replayed {SELLERS_FAILING} event(s)" in messages[0].text, browser.page_source
    progress = browser.find_element(By.ID, "replay-progress")
    assert progress.text == f"replaying: 0 of {SELLERS_FAILING} done (0 succeeded)"
    assert not browser.find_element(By.CSS_SELECTOR, "#failure-group a.replay-group").is_displayed()
    _assert_readable(browser)
    assert set(FailedEvent.objects.values_list("status", flat=True)) == {FailedEvent.Status.REPLAYING}
    assert set(FailedEventReplay.objects.values_list("via", "requested_by__username")) == {("admin-group", "operator")}
    depth = queue_depth(broker, topology.subscriber_named("seller_notification").queue_name)
    assert depth == SELLERS_FAILING, "each event went back to seller_notification's queue only"

    # The subscriber handles them (no worker runs here: as it would, one succeeds at a time); the
    # page follows without a reload.
    for n, (_, failed) in enumerate(placed, start=1):
        FailedEvent.objects.filter(pk=failed.pk).update(status=FailedEvent.Status.RESOLVED)
        replay_finished(failed_event_id=failed.pk, succeeded=True)
        expected = "replayed" if n == SELLERS_FAILING else "replaying"
        WebDriverWait(browser, 10).until(
            lambda _, n=n, expected=expected: progress.text.startswith(f"{expected}: {n} of {SELLERS_FAILING} done")
        )
    assert progress.text == f"replayed: {SELLERS_FAILING} of {SELLERS_FAILING} done ({SELLERS_FAILING} succeeded)"
    assert browser.find_element(By.CSS_SELECTOR, "[data-status-count=resolved]").text == str(SELLERS_FAILING)
    assert browser.find_element(By.CSS_SELECTOR, "[data-open-count]").text == "0"

    # From a failed event to its trace, and from there to the order.
    order_id, failed = placed[0]
    browser.get(f"{live_server.url}/admin/events/failedevent/{failed.pk}/change/")
    _assert_readable(browser)
    assert browser.find_element(By.CSS_SELECTOR, ".field-pretty_traceback pre").text.endswith("answered 503")
    assert not browser.find_elements(By.CSS_SELECTOR, "a.replay-event"), "a resolved event is not replayed again"
    browser.find_element(By.LINK_TEXT, "trace").click()
    _assert_readable(browser)
    states = _states(browser)
    assert states["order_confirmation"] == "pending", states  # published; no worker runs in this test
    browser.find_element(By.PARTIAL_LINK_TEXT, f"order #{order_id}").click()
    assert f"/admin/orders/order/{order_id}/change/" in browser.current_url


def test_an_operator_replays_from_a_failed_events_page_and_from_an_orders_trace(
    transactional_db, live_server, browser, operator, broker, broker_url
):
    placed = [_order_with_failed_seller_notification(n) for n in range(3)]
    (_, from_page), (order_id, from_trace), (_, archived) = placed
    assert on_commit_publisher.flush()
    purge_subscriber_queues(broker_url)
    queue = topology.subscriber_named("seller_notification").queue_name

    # A failed event's page: Replay asks first, then sends it back and says so.
    _log_in(browser, live_server, f"/admin/events/failedevent/{from_page.pk}/change/")
    _assert_readable(browser)
    browser.find_element(By.CSS_SELECTOR, "#failed-event-actions a.replay-event").click()
    assert f"Replay failed event #{from_page.pk}" in browser.find_element(By.ID, "event-confirm-question").text
    assert not FailedEventReplay.objects.exists(), "asking changes nothing"
    _assert_readable(browser)
    browser.find_element(By.ID, "confirm-event-action").click()
    assert f"Replayed failed event #{from_page.pk}" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert f"/admin/events/failedevent/{from_page.pk}/change/" in browser.current_url
    assert not browser.find_elements(By.CSS_SELECTOR, "a.replay-event"), "no second replay while one is under way"
    from_page.refresh_from_db()
    assert from_page.status == FailedEvent.Status.REPLAYING
    assert list(from_page.replays.values_list("action", "via", "requested_by__username")) == [
        ("replay", "admin", "operator")
    ]
    assert queue_depth(broker, queue) == 1

    # Archive, from the same page.
    browser.get(f"{live_server.url}/admin/events/failedevent/{archived.pk}/change/")
    browser.find_element(By.CSS_SELECTOR, "#failed-event-actions a.archive-event").click()
    browser.find_element(By.ID, "confirm-event-action").click()
    assert f"Archived failed event #{archived.pk}" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    archived.refresh_from_db()
    assert archived.status == FailedEvent.Status.ARCHIVED

    # An order's trace: Replay next to the failed subscriber, and back to the trace.
    browser.get(f"{live_server.url}/admin/events/outboxevent/trace/order/{order_id}/")
    _assert_readable(browser)
    assert _states(browser)["seller_notification"] == f"failed: failed event #{from_trace.pk} Replay"
    [replay] = browser.find_elements(By.CSS_SELECTOR, "tr[data-subscriber=seller_notification] a.replay-event")
    replay.click()
    browser.find_element(By.ID, "confirm-event-action").click()
    assert f"/trace/order/{order_id}/" in browser.current_url
    assert f"Replayed failed event #{from_trace.pk}" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert _states(browser)["seller_notification"] == f"replay requested: failed event #{from_trace.pk}"
    assert list(from_trace.replays.values_list("via", "requested_by__username")) == [("admin", "operator")]
    deadline = time.monotonic() + 5
    while queue_depth(broker, queue) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue_depth(broker, queue) == 2
