"""The event contract as a whole: every type has a valid schema, documented, and every type a
subscriber acts on is one of them. (Each producer's tests validate what it publishes against its
schema: test_publish_on_commit, test_cancel_order, test_segment_changed.)"""

import json
import re

import fastjsonschema
import pytest
from jsonschema import Draft202012Validator

from marketplace.events import topology
from marketplace.events.envelope import SCHEMA_DIR
from tests.support.workers import ROOT

SCHEMAS = sorted(SCHEMA_DIR.glob("*.json"))
NAME = re.compile(r"^(?P<type>[a-z_]+\.[a-z_]+)\.v(?P<version>\d+)\.json$")


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda path: path.name)
def test_every_schema_is_valid_named_for_its_type_and_documented(path):
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    fastjsonschema.compile(schema)  # what subscribers validate with
    name = NAME.match(path.name)
    assert name, f"{path.name} is not <type>.v<version>.json"
    assert schema["properties"]["type"] == {"const": name["type"]}
    assert schema["properties"]["version"]["const"] == int(name["version"])
    assert schema["$id"].endswith(path.name)
    docs = (ROOT / "docs" / "events.md").read_text()
    assert f"| `{name['type']}` | {name['version']} |" in docs, "listed in docs/events.md's table"
    assert f"marketplace/events/schemas/{path.name}" in docs


def test_every_event_type_a_subscriber_acts_on_has_a_schema():
    documented = {NAME.match(path.name)["type"] for path in SCHEMAS}
    for subscriber in topology.SUBSCRIBERS:
        assert subscriber.event_types <= documented, subscriber.name
