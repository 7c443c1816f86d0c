"""The broker topology is checked (setup_broker --check, /healthz, the relay) and migrated from the
classic-queue release (setup_broker --migrate) without losing a queued message."""

from __future__ import annotations

import json
import logging
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.core.management import CommandError, call_command
from kombu import Connection, Consumer, Producer, Queue

from marketplace import health
from marketplace.events import topology
from marketplace.events.topology_check import TopologyWatch, topology_problems
from tests.support.broker import bindings_in, queues_in

pytestmark = [pytest.mark.broker]

UNREACHABLE_MANAGEMENT_API = "http://guest:guest@127.0.0.1:1/api/"
FANOUT = topology.EVENTS_EXCHANGE.name


def retry_delays() -> dict[str, tuple[int, ...]]:
    return django_settings.SUBSCRIBER_RETRY_DELAYS


def declare_current(url: str) -> None:
    with Connection(url) as broker:
        topology.declare(broker, retry_delays())


def problems_in(url: str, management_url: str | None = None) -> list[str]:
    with Connection(url) as broker:
        found = topology_problems(
            broker, management_url or django_settings.RABBITMQ_MANAGEMENT_URL, retry_delays=retry_delays()
        )
    return [str(problem) for problem in found]


def fanout_destinations(vhost: str) -> set[str]:
    return {destination for source, destination, _ in bindings_in(vhost) if source == FANOUT}


def unbind_from_fanout(url: str, subscriber: topology.Subscriber) -> None:
    with Connection(url) as broker:
        broker.default_channel.queue_unbind(subscriber.queue_name, FANOUT, "")


@pytest.fixture(autouse=True)
def _no_cached_health():
    health._topology_cache.clear()
    yield
    health._topology_cache.clear()


# --- the check ---------------------------------------------------------------------------------


def test_a_declared_topology_has_no_problems_and_check_exits_zero(throwaway_vhost, settings):
    declare_current(throwaway_vhost.url)
    settings.BROKER_URL = throwaway_vhost.url

    assert problems_in(throwaway_vhost.url) == []
    out = StringIO()
    call_command("setup_broker", "--check", stdout=out)
    assert "broker topology is as marketplace/events/topology.py declares" in out.getvalue()


def test_check_reports_missing_queues_and_bindings_changes_nothing_and_setup_broker_heals(throwaway_vhost, settings):
    declare_current(throwaway_vhost.url)
    seller, segmentation = (
        topology.subscriber_named("seller_notification"),
        topology.subscriber_named("customer_segmentation"),
    )
    unbind_from_fanout(throwaway_vhost.url, seller)
    with Connection(throwaway_vhost.url) as broker:
        broker.default_channel.queue_delete(segmentation.queue_name)
        broker.default_channel.queue_delete(topology.RECORDER_QUEUE_NAME)
        broker.default_channel.queue_delete(seller.dead_letter_queue_name)
    settings.BROKER_URL = throwaway_vhost.url

    still_bound = [s.queue_name for s in topology.SUBSCRIBERS if s not in (seller, segmentation)]
    out = StringIO()
    with pytest.raises(CommandError, match=r"5 topology problem\(s\)"):
        call_command("setup_broker", "--check", stdout=out)

    assert out.getvalue().splitlines() == [
        "- queue marketplace.dead-letter.recorder is missing",
        "- queue marketplace.seller_notification.dead is missing",
        "- queue marketplace.customer_segmentation is missing: subscriber customer_segmentation receives no events",
        "- queue marketplace.seller_notification is not bound to exchange marketplace.events: "
        "subscriber seller_notification receives no new events",
        f"- exchange marketplace.events fans out to {len(still_bound)} of the {len(topology.SUBSCRIBERS)} "
        f"subscriber queues topology.py declares (bound: {', '.join(still_bound)})",
    ]
    assert fanout_destinations(throwaway_vhost.name) == set(still_bound), "--check changed nothing"

    call_command("setup_broker", stdout=StringIO())

    assert problems_in(throwaway_vhost.url) == []
    assert fanout_destinations(throwaway_vhost.name) == {s.queue_name for s in topology.SUBSCRIBERS}


def test_check_reports_a_queue_with_other_arguments_and_a_missing_exchange(throwaway_vhost):
    declare_current(throwaway_vhost.url)
    confirmation = topology.subscriber_named("order_confirmation")
    with Connection(throwaway_vhost.url) as broker:
        broker.default_channel.queue_delete(confirmation.queue_name)
        Queue(
            confirmation.queue_name,
            exchange=topology.EVENTS_EXCHANGE,
            durable=True,
            queue_arguments={"x-queue-type": "classic"},
        )(broker.default_channel).declare()
        broker.default_channel.exchange_delete(topology.DEAD_LETTER_EXCHANGE.name)

    problems = problems_in(throwaway_vhost.url)

    assert problems[0] == "exchange marketplace.dead-letter is missing"
    [arguments] = [p for p in problems if p.startswith("queue marketplace.order_confirmation has")]
    assert "x-queue-type='classic' (want 'quorum')" in arguments
    assert "x-delivery-limit=None (want 5)" in arguments
    assert "run setup_broker --migrate" in arguments
    assert len(problems) == 2, problems  # the dead-letter bindings went with their exchange: not reported twice


def test_an_unreachable_management_api_is_a_problem_of_its_own(throwaway_vhost):
    declare_current(throwaway_vhost.url)

    problems = problems_in(throwaway_vhost.url, management_url=UNREACHABLE_MANAGEMENT_API)

    assert len(problems) == 1
    assert problems[0].startswith("bindings not checked: management API http://127.0.0.1:1/api/ unreachable")
    assert "guest:guest" not in problems[0]


# --- /healthz -----------------------------------------------------------------------------------


def test_healthz_reports_the_topology(client, db, throwaway_vhost, settings):
    declare_current(throwaway_vhost.url)
    settings.BROKER_URL = throwaway_vhost.url

    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "ok"
    assert response.json()["topology"] == "ok"


def test_healthz_is_degraded_by_a_missing_binding_and_caches_the_check(client, db, throwaway_vhost, settings):
    declare_current(throwaway_vhost.url)
    settings.BROKER_URL = throwaway_vhost.url
    unbind_from_fanout(throwaway_vhost.url, topology.subscriber_named("seller_notification"))

    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "degraded"
    assert response.json()["broker"] == "ok"
    assert any("not bound to exchange marketplace.events" in p for p in response.json()["topology"])

    declare_current(throwaway_vhost.url)  # healed, but the result is cached for a few seconds
    assert client.get("/healthz").json()["status"] == "degraded"
    health._topology_cache.clear()
    assert client.get("/healthz").json()["topology"] == "ok"


def test_healthz_without_the_management_api_says_so_but_is_not_degraded(client, db, throwaway_vhost, settings):
    declare_current(throwaway_vhost.url)
    settings.BROKER_URL = throwaway_vhost.url
    settings.RABBITMQ_MANAGEMENT_URL = UNREACHABLE_MANAGEMENT_API

    body = client.get("/healthz").json()

    assert body["status"] == "ok"
    assert body["topology"][0].startswith("bindings not checked")


# --- the relay -----------------------------------------------------------------------------------


def test_the_relay_alerts_once_and_heals_a_lost_binding(transactional_db, throwaway_vhost, settings, caplog):
    declare_current(throwaway_vhost.url)
    settings.BROKER_URL = throwaway_vhost.url
    unbind_from_fanout(throwaway_vhost.url, topology.subscriber_named("seller_notification"))

    with caplog.at_level(logging.INFO, logger="marketplace.events.topology_check"):
        call_command("relay_outbox", "--once", stdout=StringIO())

    assert fanout_destinations(throwaway_vhost.name) == {s.queue_name for s in topology.SUBSCRIBERS}, "healed"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    total = len(topology.SUBSCRIBERS)
    expected = f"fans out to {total - 1} of the {total} subscriber queues"
    assert any(expected in message for message in errors), caplog.text
    assert any("healed" in r.getMessage() for r in caplog.records), caplog.text
    [alert] = mail.outbox
    assert alert.to == [email for _name, email in settings.ADMINS]
    assert "marketplace.seller_notification is not bound" in alert.body
    assert "healed" in alert.body
    assert "backfill_events --subscriber seller_notification --since" in alert.body


def test_the_relay_watch_alerts_once_per_distinct_problem_set(transactional_db, throwaway_vhost, settings):
    declare_current(throwaway_vhost.url)
    watch = TopologyWatch(
        broker_url=throwaway_vhost.url,
        management_url=settings.RABBITMQ_MANAGEMENT_URL,
        interval=60,
        retry_delays=retry_delays(),
    )
    assert watch.check_if_due() == []
    assert watch.check_if_due() is None, "not due again before the interval"

    # A queue with other arguments cannot be healed by declaring: the problem stays.
    confirmation = topology.subscriber_named("order_confirmation")
    with Connection(throwaway_vhost.url) as broker:
        broker.default_channel.queue_delete(confirmation.queue_name)
        Queue(
            confirmation.queue_name,
            exchange=topology.EVENTS_EXCHANGE,
            durable=True,
            queue_arguments={"x-queue-type": "classic"},
        )(broker.default_channel).declare()
    for _ in range(3):
        assert watch.check()
    assert len(mail.outbox) == 1, "the same problems are alerted once"
    assert "NOT healed" in mail.outbox[0].body

    unbind_from_fanout(throwaway_vhost.url, topology.subscriber_named("customer_segmentation"))
    watch.check()
    assert len(mail.outbox) == 2, "a new problem set is alerted"
    since = "backfill_events --subscriber customer_segmentation --since 20"  # the last intact check's time
    assert since in mail.outbox[1].body


# --- setup_broker --migrate ------------------------------------------------------------------------


def previous_release_arguments(subscriber: topology.Subscriber) -> dict:
    return {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "marketplace.dead-letter",
        "x-dead-letter-routing-key": subscriber.dead_letter_queue_name,
    }


# The subscribers of the classic-queue release (loyalty_rewards came after it).
PREVIOUS_RELEASE_SUBSCRIBERS = ("order_confirmation", "seller_notification", "customer_segmentation")


def declare_previous_release(url: str) -> None:
    """The classic-queue topology of the release before quorum queues, as it declared it."""
    with Connection(url) as broker:
        channel = broker.default_channel
        for exchange in (topology.EVENTS_EXCHANGE, topology.DEAD_LETTER_EXCHANGE):
            exchange(channel).declare()
        for subscriber in map(topology.subscriber_named, PREVIOUS_RELEASE_SUBSCRIBERS):
            Queue(
                subscriber.dead_letter_queue_name,
                exchange=topology.DEAD_LETTER_EXCHANGE,
                routing_key=subscriber.dead_letter_queue_name,
                durable=True,
                queue_arguments={"x-queue-type": "classic"},
            )(channel).declare()
            Queue(
                subscriber.queue_name,
                exchange=topology.EVENTS_EXCHANGE,
                durable=True,
                queue_arguments=previous_release_arguments(subscriber),
            )(channel).declare()


def publish(url: str, bodies: list[bytes], *, exchange=topology.EVENTS_EXCHANGE, routing_key: str = "") -> None:
    with Connection(url, transport_options={"confirm_publish": True}) as broker:
        producer = Producer(broker.default_channel)
        for number, body in enumerate(bodies):
            producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                serializer=None,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=f"message-{number}",
                headers={"event_type": "order.placed", "event_version": 1, "number": number},
            )


def drain(url: str, queue_name: str) -> list:
    messages = []
    with Connection(url) as broker:
        queue = Queue(queue_name)(broker.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            messages.append(message)
    return messages


def body(message) -> bytes:
    return message.body.encode() if isinstance(message.body, str) else message.body


def queue_arguments(vhost: str) -> dict[str, dict]:
    return {name: queue["arguments"] for name, queue in queues_in(vhost).items()}


def test_migrate_moves_the_classic_queues_to_quorum_without_losing_a_message(throwaway_vhost, settings):
    events = [json.dumps({"id": f"event-{n}", "type": "order.placed"}).encode() for n in range(25)]
    dead = [json.dumps({"id": f"dead-{n}"}).encode() for n in range(3)]
    declare_previous_release(throwaway_vhost.url)
    publish(throwaway_vhost.url, events)
    confirmation = topology.subscriber_named("order_confirmation")
    publish(
        throwaway_vhost.url,
        dead,
        exchange=topology.DEAD_LETTER_EXCHANGE,
        routing_key=confirmation.dead_letter_queue_name,
    )
    settings.BROKER_URL = throwaway_vhost.url

    out = StringIO()
    call_command("setup_broker", "--migrate", stdout=out)

    output = out.getvalue()
    assert "every worker must be stopped" in output
    assert "marketplace.order_confirmation: classic queue with 25 message(s)" in output
    assert "marketplace.order_confirmation.dead: classic queue with 3 message(s)" in output
    assert "migrated 6 queue(s)" in output
    arguments = queue_arguments(throwaway_vhost.name)
    assert not [name for name in arguments if name.endswith(".migrating")]
    for queue in topology.all_queues(retry_delays()):
        assert arguments[queue.name] == queue.queue_arguments
        assert arguments[queue.name]["x-queue-type"] == "quorum"
    assert fanout_destinations(throwaway_vhost.name) == {s.queue_name for s in topology.SUBSCRIBERS}
    assert problems_in(throwaway_vhost.url) == []  # bindings, recorder and retry queues included

    for subscriber in map(topology.subscriber_named, PREVIOUS_RELEASE_SUBSCRIBERS):
        messages = drain(throwaway_vhost.url, subscriber.queue_name)
        assert [body(m) for m in messages] == events, subscriber.name
        assert [m.properties["message_id"] for m in messages] == [f"message-{n}" for n in range(25)]
        assert [m.headers["number"] for m in messages] == list(range(25))
        assert {m.content_type for m in messages} == {"application/json"}
        assert {m.delivery_info["routing_key"] for m in messages} == {subscriber.queue_name}
    assert [body(m) for m in drain(throwaway_vhost.url, confirmation.dead_letter_queue_name)] == dead

    again = StringIO()
    call_command("setup_broker", "--migrate", stdout=again)
    assert "nothing to migrate" in again.getvalue()
    assert "migrated 0 queue(s)" in again.getvalue()


def test_migrate_refuses_while_a_worker_consumes(throwaway_vhost, settings):
    declare_previous_release(throwaway_vhost.url)
    publish(throwaway_vhost.url, [b"{}"])
    settings.BROKER_URL = throwaway_vhost.url
    segmentation = topology.subscriber_named("customer_segmentation")

    with Connection(throwaway_vhost.url) as worker:
        consumer = Consumer(
            worker.default_channel,
            queues=[Queue(segmentation.queue_name, no_declare=True)],
            callbacks=[lambda body, message: None],  # never acknowledged: back in the queue afterwards
            no_ack=False,
        )
        consumer.consume()
        with pytest.raises(CommandError, match=r"marketplace\.customer_segmentation \(1 consumer\(s\)\).*Stop every"):
            call_command("setup_broker", "--migrate", stdout=StringIO())
        consumer.cancel()

    assert queue_arguments(throwaway_vhost.name)[segmentation.queue_name]["x-queue-type"] == "classic"
    previous = {topology.subscriber_named(name).queue_name for name in PREVIOUS_RELEASE_SUBSCRIBERS}
    assert fanout_destinations(throwaway_vhost.name) == previous, "untouched"


def test_migrate_finishes_a_migration_that_stopped_half_way(throwaway_vhost, settings):
    """The old queue is gone and its messages wait in the holding queue: the next run moves them in."""
    declare_current(throwaway_vhost.url)
    seller = topology.subscriber_named("seller_notification")
    holding = f"{seller.queue_name}.migrating"
    with Connection(throwaway_vhost.url) as broker:
        broker.default_channel.queue_delete(seller.queue_name)
        Queue(holding, exchange=topology.EVENTS_EXCHANGE, durable=True, queue_arguments={"x-queue-type": "classic"})(
            broker.default_channel
        ).declare()
    events = [f"held-{n}".encode() for n in range(7)]
    publish(throwaway_vhost.url, events)
    for subscriber in topology.SUBSCRIBERS:
        if subscriber != seller:
            drain(throwaway_vhost.url, subscriber.queue_name)
    settings.BROKER_URL = throwaway_vhost.url

    out = StringIO()
    call_command("setup_broker", "--migrate", stdout=out)

    assert "migrated 1 queue(s)" in out.getvalue()
    assert holding not in queue_arguments(throwaway_vhost.name)
    assert [body(m) for m in drain(throwaway_vhost.url, seller.queue_name)] == events
    assert problems_in(throwaway_vhost.url) == []
