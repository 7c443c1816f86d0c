"""What real Celery worker processes count (in their pool processes) shows in the web's /metrics."""

import pytest

from marketplace.events import topology
from tests.factories import BuyerFactory, ProductFactory
from tests.support.waiting import eventually
from tests.support.workers import TEST_RETRY_ENV, record_dead_letters

pytestmark = [pytest.mark.workers]

MAX_RETRIES = int(TEST_RETRY_ENV["SUBSCRIBER_MAX_RETRIES"])
# The subscribers of the order.placed event these tests cause.
SUBSCRIBERS = [subscriber.name for subscriber in topology.subscribers_of("order.placed")]


def _counts(scraped, name):
    return {subscriber: scraped.value(name, subscriber=subscriber) for subscriber in SUBSCRIBERS}


def _place_order(client_for):
    buyer = BuyerFactory()
    product = ProductFactory(stock=5)  # its seller is notified by email
    response = client_for(buyer).post(
        "/api/orders/", {"lines": [{"product": product.pk, "quantity": 1}]}, format="json"
    )
    assert response.status_code == 201, response.content


def test_every_subscriber_counts_the_event_it_processed(workers, faults, client_for, scrape):
    processed = "marketplace_subscriber_events_processed_total"
    handled = "marketplace_subscriber_handler_duration_seconds_count"
    before = scrape()

    _place_order(client_for)

    expected = {subscriber: count + 1 for subscriber, count in _counts(before, processed).items()}
    after = eventually(
        lambda: (scraped := scrape()) and _counts(scraped, processed) == expected and scraped,
        timeout=20,
        message=f"{processed} to reach {expected}",
    )
    for subscriber in SUBSCRIBERS:
        assert after.value(handled, subscriber=subscriber) == before.value(handled, subscriber=subscriber) + 1
        assert after.value("marketplace_subscriber_events_retried_total", subscriber=subscriber) == before.value(
            "marketplace_subscriber_events_retried_total", subscriber=subscriber
        )
        assert after.value("marketplace_subscriber_queue_consumers", subscriber=subscriber) == 1
    # Counted by the workers' pool processes, not by this one: their files are in the directory.
    assert len(emails := faults.emails()) == 2, emails


def test_retries_and_dead_letters_are_counted_and_the_failure_shows_in_the_gauges(workers, faults, client_for, scrape):
    retried = "marketplace_subscriber_events_retried_total"
    dead_lettered = "marketplace_subscriber_events_dead_lettered_total"
    before = scrape()
    faults.fail_email("always")  # the buyer's confirmation and the seller's email: transient failures

    _place_order(client_for)

    emailing = ("order_confirmation", "seller_notification")
    expected = {
        subscriber: before.value(dead_lettered, subscriber=subscriber) + (subscriber in emailing)
        for subscriber in SUBSCRIBERS
    }
    after = eventually(
        lambda: (scraped := scrape()) and _counts(scraped, dead_lettered) == expected and scraped,
        timeout=60,  # every retry's wait, on a loaded machine
        message=f"{dead_lettered} to reach {expected}",
    )
    for subscriber in emailing:
        assert after.value(retried, subscriber=subscriber) == before.value(retried, subscriber=subscriber) + MAX_RETRIES
        # The dead letter waits in the subscriber's dead-letter queue.
        assert after.value("marketplace_dead_letter_queue_messages", subscriber=subscriber) == 1
    assert after.value(retried, subscriber="customer_segmentation") == before.value(
        retried, subscriber="customer_segmentation"
    )
    assert after.value("marketplace_dead_letter_queue_messages", subscriber="customer_segmentation") == 0

    recorded = record_dead_letters()
    assert {failure.subscriber for failure in recorded} == set(emailing)
    scraped = scrape()
    for subscriber in emailing:
        assert scraped.value("marketplace_failed_events_open", subscriber=subscriber) == 1
        assert scraped.value("marketplace_failed_events_open_by_exception", subscriber=subscriber) == 1
