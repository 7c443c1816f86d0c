"""Events of another deployment (another database's system sharing the vhost, or one before it):
every subscriber dead-letters them as foreign and changes nothing."""

import uuid

import pytest
from kombu import Connection

from marketplace.events import broker, topology
from marketplace.events.envelope import deployment
from marketplace.events.models import FailedEvent, ProcessedEvent
from segmentation.models import CustomerProfile
from tests.support.waiting import eventually
from tests.support.workers import record_dead_letters

pytestmark = [pytest.mark.workers]

ORDER_SUBSCRIBERS = {s.name for s in topology.subscribers_of("order.placed")}


def _publish_to_fanout(broker_url, envelope: dict) -> None:
    body, properties = broker.event_message(envelope)
    with Connection(broker_url) as conn:
        conn.Producer().publish(body, exchange=topology.EVENTS_EXCHANGE.name, routing_key="", **properties)


def test_an_event_of_another_deployment_is_refused_by_every_subscriber(
    workers, faults, shop, place_order, broker_url, seller_webhook
):
    _, ours = place_order(shop.buyer, (shop.product, 1))
    assert ours["deployment"] == deployment()
    eventually(lambda: faults.emails(), timeout=20, message="our own order's confirmation")
    labelled = {**ours, "id": str(uuid.uuid4()), "deployment": "marketplace@1/16384"}
    unlabelled = {key: value for key, value in ours.items() if key != "deployment"} | {"id": str(uuid.uuid4())}

    for foreign in (labelled, unlabelled):
        _publish_to_fanout(broker_url, foreign)

    def refused():
        rows = record_dead_letters(event_id__in=[labelled["id"], unlabelled["id"]])
        return rows if len(rows) == 2 * len(ORDER_SUBSCRIBERS) else None

    rows = eventually(refused, timeout=30, message="both foreign events refused by every order subscriber")
    assert {row.subscriber for row in rows} == ORDER_SUBSCRIBERS
    assert {row.exception_class for row in rows} == {"marketplace.events.envelope.ForeignEvent"}
    assert all("marketplace@1/16384" in row.exception_message for row in rows if str(row.event_id) == labelled["id"])
    assert not ProcessedEvent.objects.filter(event_id__in=[labelled["id"], unlabelled["id"]]).exists()
    assert [mail["event_id"] for mail in faults.emails()] == [ours["id"]]
    assert len(seller_webhook.requests) == 1
    assert CustomerProfile.objects.get(buyer=shop.buyer).order_count == 1
    assert not FailedEvent.objects.filter(event_id=ours["id"]).exists()
