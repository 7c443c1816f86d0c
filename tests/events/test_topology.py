"""The broker topology: declared from one module, idempotently, and loud about a queue that disagrees."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from kombu import Connection, Exchange, Queue

from marketplace.events import topology
from tests.conftest import rabbitmqctl

pytestmark = [pytest.mark.broker]


def list_json(what: str, vhost: str, *fields: str) -> list[dict]:
    return json.loads(rabbitmqctl(f"list_{what}", "-p", vhost, *fields, "--formatter", "json", "--silent"))


def test_setup_broker_declares_everything_and_can_run_again(throwaway_vhost, settings):
    settings.BROKER_URL = throwaway_vhost.url
    outputs = []
    for _ in range(2):
        out = StringIO()
        call_command("setup_broker", stdout=out)
        outputs.append(out.getvalue())

    assert all("broker topology declared" in output for output in outputs)
    queues = {q["name"]: q for q in list_json("queues", throwaway_vhost.name, "name", "durable", "arguments")}
    assert set(queues) == {name for s in topology.SUBSCRIBERS for name in (s.queue_name, s.dead_letter_queue_name)}
    for subscriber in topology.SUBSCRIBERS:
        queue = queues[subscriber.queue_name]
        assert queue["durable"] is True
        assert {name: value for name, _type, value in queue["arguments"]} == {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "marketplace.dead-letter",
            "x-dead-letter-routing-key": subscriber.dead_letter_queue_name,
        }
    bindings = {
        (b["source_name"], b["destination_name"], b["routing_key"])
        for b in list_json("bindings", throwaway_vhost.name, "source_name", "destination_name", "routing_key")
        if b["source_name"]  # leave out the default exchange's implicit bindings
    }
    assert bindings == {("marketplace.events", s.queue_name, "") for s in topology.SUBSCRIBERS} | {
        ("marketplace.dead-letter", s.dead_letter_queue_name, s.dead_letter_queue_name) for s in topology.SUBSCRIBERS
    }


@pytest.mark.parametrize(
    ("arguments", "argument_at_fault"),
    [
        pytest.param(
            {
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "marketplace.dead-letter",
                "x-dead-letter-routing-key": "marketplace.order_confirmation.dead",
            },
            "x-queue-type",
            id="quorum-queue",
        ),
        pytest.param({"x-queue-type": "classic"}, "x-dead-letter-exchange", id="no-dead-letter-arguments"),
    ],
)
def test_a_queue_declared_with_other_arguments_is_a_topology_mismatch(
    throwaway_vhost, settings, arguments, argument_at_fault
):
    with Connection(throwaway_vhost.url) as broker:
        Queue("marketplace.order_confirmation", durable=True, queue_arguments=arguments)(
            broker.default_channel
        ).declare()

        with pytest.raises(topology.TopologyMismatch) as mismatch:
            topology.declare(broker)

    assert "marketplace.order_confirmation" in str(mismatch.value)
    assert argument_at_fault in str(mismatch.value)

    settings.BROKER_URL = throwaway_vhost.url
    with pytest.raises(CommandError, match=argument_at_fault) as command_error:
        call_command("setup_broker", stdout=StringIO())
    assert "marketplace.order_confirmation" in str(command_error.value)


def test_an_events_exchange_of_another_type_is_a_topology_mismatch(throwaway_vhost):
    with Connection(throwaway_vhost.url) as broker:
        Exchange("marketplace.events", type="topic", durable=True)(broker.default_channel).declare()

        with pytest.raises(topology.TopologyMismatch, match=r"marketplace\.events") as mismatch:
            topology.declare(broker)

    assert "type" in str(mismatch.value)


@pytest.mark.workers
def test_a_worker_declares_its_queue_and_fanout_binding_on_a_fresh_broker(throwaway_vhost, start_worker):
    worker = start_worker("customer_segmentation", BROKER_URL=throwaway_vhost.url)
    try:
        bindings = list_json("bindings", throwaway_vhost.name, "source_name", "destination_name")
    finally:
        worker.stop()
    assert {"source_name": "marketplace.events", "destination_name": "marketplace.customer_segmentation"} in bindings
    queues = {q["name"] for q in list_json("queues", throwaway_vhost.name, "name")}
    assert "marketplace.customer_segmentation.dead" in queues
