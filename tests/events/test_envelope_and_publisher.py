import copy
import json
import socket

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from marketplace.events.broker import BrokerPublisher
from marketplace.events.envelope import InvalidEnvelope, schema_path, validate_envelope
from tests.events.conftest import order_placed_sample

# An envelope names its deployment, which is read from the database once per process.
pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda e: e.update(occurred_at="yesterday"), "occurred_at"),
        (lambda e: e.update(occurred_at="2026-03-14T10:26:53+01:00"), "occurred_at"),
        (lambda e: e["data"].update(placed_at="2026-03-14T09:26:53+00:00"), "data/placed_at"),
        (lambda e: e["data"].update(placed_at="2026-13-45T99:00:00Z"), "data/placed_at"),
        (lambda e: e["data"].update(total=12.5), "data/total"),
        (lambda e: e.update(version=2), "unknown event"),
        (lambda e: e.pop("id"), r"\(root\): must contain \['id'\]"),
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


def _contract_breaking_variants(envelope: dict):
    """The envelope with each field removed or given a wrong value, top level, data and a line."""
    wrong_values = (
        None, "", "x", -1, 0, 1.5, True, [], {}, "1.234", "not-a-uuid", "2026-01-01 00:00:00",
        "2026-01-01T00:00:00+01:00",
    )  # fmt: skip
    for path in ([], ["data"], ["data", "lines", 0]):
        part = envelope
        for step in path:
            part = part[step]
        for key in list(part):
            removed = copy.deepcopy(envelope)
            _at(removed, path).pop(key)
            yield removed
            for value in wrong_values:
                changed = copy.deepcopy(envelope)
                _at(changed, path)[key] = value
                yield changed


def _at(envelope: dict, path: list) -> dict:
    for step in path:
        envelope = envelope[step]
    return envelope


def test_the_runtime_validator_agrees_with_the_reference_implementation():
    """Subscribers validate with compiled schemas (fastjsonschema); a non-Python consumer would use
    a reference implementation. Both must accept and refuse the same envelopes."""
    envelope = order_placed_sample()
    reference = Draft202012Validator(
        json.loads(schema_path("order.placed", 1).read_text()), format_checker=FormatChecker()
    )
    disagreements = []
    for variant in [envelope, *_contract_breaking_variants(envelope)]:
        try:
            validate_envelope(variant)
            runtime_accepts = True
        except InvalidEnvelope:
            runtime_accepts = False
        if runtime_accepts != reference.is_valid(variant):
            disagreements.append(variant)
    assert disagreements == []
