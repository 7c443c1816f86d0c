import socket

import pytest

from marketplace.events.envelope import InvalidEnvelope, validate_envelope
from marketplace.events.publisher import BrokerPublisher
from tests.events.conftest import order_placed_sample


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda e: e.update(occurred_at="yesterday"), "occurred_at"),
        (lambda e: e["data"].update(placed_at="2026-13-45T99:00:00Z"), "data/placed_at"),
        (lambda e: e["data"].update(total=12.5), "data/total"),
        (lambda e: e.update(version=2), "unknown event"),
        (lambda e: e.pop("id"), "'id' is a required property"),
        (lambda e: e["data"]["lines"][0].update(quantity=0), "data/lines/0/quantity"),
    ],
)
def test_an_envelope_that_breaks_the_contract_is_refused(change, complaint):
    envelope = order_placed_sample()
    change(envelope)
    with pytest.raises(InvalidEnvelope, match=complaint):
        validate_envelope(envelope)


def test_a_valid_envelope_passes():
    envelope = order_placed_sample()
    assert validate_envelope(envelope) is envelope


def test_a_stale_cached_connection_is_replaced_without_losing_the_event(broker_url, event_tap):
    publisher = BrokerPublisher(url=broker_url)
    first, second = order_placed_sample(1), order_placed_sample(2)
    publisher.publish(first)
    # The broker goes away under the cached connection (as after a RabbitMQ restart).
    publisher._connection.connection.sock.shutdown(socket.SHUT_RDWR)
    publisher.publish(second)
    publisher.close()

    ids = [message.payload["id"] for message in event_tap.drain(expected=2)]
    assert ids == [first["id"], second["id"]]
