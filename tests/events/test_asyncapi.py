"""The AsyncAPI document: generated from the topology and the schemas, committed in step, served,
and valid for the official parser (@asyncapi/parser, run through node from tests/asyncapi/)."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import warnings
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker
from kombu import Exchange, binding
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from marketplace.events import asyncapi, backfill, topology
from marketplace.events import headers as message_headers
from marketplace.events.broker import event_message
from marketplace.internals import amqp as internal_amqp
from tests.support.workers import ROOT

COMMITTED = ROOT / "docs" / "asyncapi.json"
PARSER_DIR = ROOT / "tests" / "asyncapi"
REGENERATE = "MARKETPLACE_ENV=development .venv/bin/python manage.py asyncapi --output docs/asyncapi.json"


@pytest.fixture(scope="session")
def asyncapi_parser():
    """``validate(path) -> diagnostics`` with @asyncapi/parser, installed from tests/asyncapi's lock.

    Installed once per machine and lock, into the user's cache directory (as npm keeps its own
    downloads there), and linked as tests/asyncapi/node_modules (git-ignored): every checkout of the
    same lock shares it, and a fresh clone's run skips the 10 s of CPU of an `npm ci`."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        pytest.skip(
            "node is not installed, so @asyncapi/parser cannot validate the AsyncAPI document "
            "(bin/test installs nodejs and npm where it may)"
        )
    lock = PARSER_DIR / "package-lock.json"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "marketplace"
    installed_dir = cache / f"asyncapi-parser-{wanted[:16]}"
    stamp = installed_dir / "node_modules" / ".installed-from-lock"
    link = PARSER_DIR / "node_modules"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "asyncapi-parser.lock", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # one install when several sessions start at once
        if not stamp.exists() or stamp.read_text() != wanted:
            if npm is None:
                pytest.skip(
                    "npm is not installed, so @asyncapi/parser cannot be installed (tests/asyncapi/package.json)"
                )
            shutil.rmtree(installed_dir, ignore_errors=True)
            installed_dir.mkdir()
            for name in ("package.json", "package-lock.json"):
                shutil.copy(PARSER_DIR / name, installed_dir / name)
            installed = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=installed_dir,
                capture_output=True,
                text=True,
                timeout=170,
                env={**os.environ, "npm_config_update_notifier": "false"},
            )
            if installed.returncode:
                pytest.fail(f"`npm ci` for tests/asyncapi failed:\n{installed.stdout}\n{installed.stderr}")
            stamp.write_text(wanted)
        if not (link.is_symlink() and link.resolve() == (installed_dir / "node_modules").resolve()):
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.exists():  # a checkout's own install, from before the cache
                shutil.rmtree(link)
            link.symlink_to(installed_dir / "node_modules", target_is_directory=True)

    def validate(*paths: Path) -> dict[str, list[dict]]:
        """The parser's diagnostics of each document, by its path: one node process for them all."""
        parsed = subprocess.run(
            [node, str(PARSER_DIR / "validate.mjs"), "--json", *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            return json.loads(parsed.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"the parser failed (exit {parsed.returncode}):\n{parsed.stdout}\n{parsed.stderr}")

    return validate


def test_the_committed_document_is_what_the_generator_produces():
    assert COMMITTED.read_text() == asyncapi.asyncapi_json(), f"docs/asyncapi.json is stale: run {REGENERATE}"


def test_the_document_is_valid_for_the_official_parser(asyncapi_parser, tmp_path):
    document = tmp_path / "asyncapi.json"
    document.write_text(asyncapi.asyncapi_json())
    # A binding AMQP does not know: the parser must report it, or a pass here would mean nothing.
    broken = asyncapi.asyncapi_document()
    broken["channels"]["events"]["bindings"]["amqp"]["exchange"]["type"] = "fan-out"
    (tmp_path / "broken.json").write_text(json.dumps(broken))

    diagnostics = asyncapi_parser(document, tmp_path / "broken.json")

    for warning in (d for d in diagnostics[str(document)] if d["severity"] == "warning"):
        warnings.warn(f"@asyncapi/parser: {warning['code']} at {warning['path']}: {warning['message']}", stacklevel=1)
    errors = [
        f"{d['code']} at {d['path']}: {d['message']}" for d in diagnostics[str(document)] if d["severity"] == "error"
    ]
    assert not errors, "\n".join(errors)
    assert any(d["severity"] == "error" for d in diagnostics[str(tmp_path / "broken.json")])


@pytest.mark.django_db
def test_the_api_serves_the_generated_document_without_credentials(client):
    response = client.get("/api/asyncapi.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == asyncapi.asyncapi_document()


@pytest.mark.django_db
def test_the_openapi_schema_does_not_list_the_asyncapi_route(client):
    assert "/api/asyncapi.json" not in client.get("/api/schema/", {"format": "json"}).json()["paths"]


def test_the_check_command_names_the_regeneration_command(tmp_path):
    stale = tmp_path / "asyncapi.json"
    stale.write_text("{}\n")

    with pytest.raises(CommandError, match=r"manage\.py asyncapi --output docs/asyncapi\.json"):
        call_command("asyncapi", "--check", "--output", str(stale))

    call_command("asyncapi", "--output", str(stale), stdout=StringIO())
    call_command("asyncapi", "--check", "--output", str(stale), stdout=StringIO())


def test_the_events_exchange_is_a_durable_fanout_every_event_is_published_to():
    document = asyncapi.asyncapi_document()
    events = document["channels"]["events"]
    keys = {contract.key for contract in asyncapi.event_contracts()}

    assert events["address"] == topology.EVENTS_EXCHANGE.name
    assert events["bindings"]["amqp"]["is"] == "routingKey"
    assert events["bindings"]["amqp"]["exchange"] | {"vhost": "/"} == {
        "name": "marketplace.events",
        "type": "fanout",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    assert set(events["messages"]) == keys
    published = {
        ref["$ref"].rpartition("/")[2]
        for operation in document["operations"].values()
        if operation["action"] == "send" and operation["channel"] == {"$ref": "#/channels/events"}
        for ref in operation["messages"]
    }
    assert published == keys
    assert "customer_segmentation.publish.customer.segment_changed.v1" in document["operations"]
    assert "publish.order.placed.v1" in document["operations"]


def test_every_subscriber_queue_appears_with_its_arguments_bindings_and_dead_letter_queue():
    document = asyncapi.asyncapi_document()
    channels, operations = document["channels"], document["operations"]
    for subscriber in topology.SUBSCRIBERS:
        queue = channels[f"{subscriber.name}.queue"]
        amqp = queue["bindings"]["amqp"]
        assert queue["address"] == amqp["queue"]["name"] == subscriber.queue_name
        assert amqp["is"] == "queue"
        assert amqp["queue"]["durable"] is True
        assert amqp["x-queue-arguments"] == subscriber.queue.queue_arguments
        assert amqp["x-queue-arguments"]["x-queue-type"] == "quorum"
        assert amqp["x-queue-arguments"]["x-delivery-limit"] == topology.DELIVERY_LIMIT
        assert amqp["x-queue-arguments"]["x-dead-letter-routing-key"] == subscriber.dead_letter_queue_name
        assert amqp["x-exchange-bindings"] == [{"exchange": "marketplace.events", "routingKey": ""}]
        received = {ref["$ref"].rpartition("/")[2] for ref in operations[f"{subscriber.name}.receive"]["messages"]}
        assert {key.rpartition(".v")[0] for key in received - {asyncapi.TASK_MESSAGE}} == subscriber.event_types

        dead = channels[f"{subscriber.name}.dead"]["bindings"]["amqp"]
        assert dead["queue"]["name"] == subscriber.dead_letter_queue_name
        assert dead["x-exchange-bindings"] == [
            {"exchange": "marketplace.dead-letter", "routingKey": subscriber.dead_letter_queue_name}
        ]
        route = channels[f"{subscriber.name}.deadLetter"]
        assert route["address"] == subscriber.dead_letter_queue_name
        assert route["bindings"]["amqp"]["exchange"]["type"] == "direct"

        retry = channels[f"{subscriber.name}.retry"]
        assert retry["address"] == f"{subscriber.queue_name}.retry.{{delay}}s"
        assert retry["bindings"]["amqp"]["x-queue-arguments"] == {
            **subscriber.retry_queue(1).queue_arguments,
            "x-message-ttl": "{delay} * 1000",
        }
    recorder = channels["deadLetterRecorder"]["bindings"]["amqp"]["x-exchange-bindings"]
    assert {b["routingKey"] for b in recorder} == {s.dead_letter_queue_name for s in topology.SUBSCRIBERS}
    assert channels["parked"]["address"] == topology.PARKED_QUEUE_NAME


def test_a_new_subscriber_is_documented_with_no_edit_to_the_generator(monkeypatch):
    audit = topology.Subscriber("audit_log", task="audit.record", event_types=frozenset({"order.cancelled"}))
    monkeypatch.setattr(topology, "SUBSCRIBERS", (*topology.SUBSCRIBERS, audit))

    document = asyncapi.asyncapi_document()

    assert document["channels"]["audit_log.queue"]["address"] == "marketplace.audit_log"
    assert document["channels"]["audit_log.dead"]["address"] == "marketplace.audit_log.dead"
    assert "marketplace.audit_log.dead" in {
        b["routingKey"] for b in document["channels"]["deadLetterRecorder"]["bindings"]["amqp"]["x-exchange-bindings"]
    }
    assert document["operations"]["audit_log.receive"]["messages"] == [
        {"$ref": "#/channels/audit_log.queue/messages/order.cancelled.v1"},
        {"$ref": "#/channels/audit_log.queue/messages/subscriberTask"},
    ]
    assert (
        "audit.record" in document["components"]["messages"]["subscriberTask"]["headers"]["properties"]["task"]["enum"]
    )


def test_queues_bound_by_event_type_get_only_the_events_their_bindings_match(monkeypatch):
    """Should subscriber queues be bound through a headers exchange, the document follows."""
    exchange = Exchange("marketplace.events", type="headers", durable=True)

    @dataclasses.dataclass(frozen=True)
    class Routed(topology.Subscriber):
        @property
        def fanout_binding(self) -> binding:
            (event_type,) = self.event_types
            return binding(exchange, arguments={"x-match": "any", "event_type": event_type})

    monkeypatch.setattr(topology, "EVENTS_EXCHANGE", exchange)
    loyalty = topology.subscriber_named("loyalty_rewards")
    monkeypatch.setattr(topology, "SUBSCRIBERS", (Routed(loyalty.name, loyalty.task, loyalty.event_types),))

    document = asyncapi.asyncapi_document()

    assert document["channels"]["events"]["bindings"]["amqp"]["exchange"]["type"] == "headers"
    queue = document["channels"]["loyalty_rewards.queue"]
    assert set(queue["messages"]) == {"customer.segment_changed.v1", asyncapi.TASK_MESSAGE}
    assert queue["bindings"]["amqp"]["x-exchange-bindings"] == [
        {
            "exchange": "marketplace.events",
            "routingKey": "",
            "arguments": {"x-match": "any", "event_type": "customer.segment_changed"},
        }
    ]


def test_every_event_schema_carries_an_example_it_accepts():
    for contract in asyncapi.event_contracts():
        assert contract.examples, f"{contract.key}'s schema has no examples"
        for example in contract.examples:
            Draft202012Validator(contract.schema, format_checker=FormatChecker()).validate(example)


def test_every_message_example_matches_its_payload_and_headers_schemas():
    """@asyncapi/parser does not check examples of a 3.0 document: checked here against the document's
    own schemas (draft 07, as AsyncAPI reads them), $refs resolved within it."""
    document = asyncapi.asyncapi_document()
    registry = Registry().with_resource("urn:asyncapi", Resource.from_contents(document, default_specification=DRAFT7))
    for key, message in document["components"]["messages"].items():
        assert message["examples"], f"{key} has no example"
        for example in message["examples"]:
            for part in ("payload", "headers"):
                if part in example:
                    schema = {"$ref": f"urn:asyncapi#/components/messages/{key}/{part}"}
                    validator = Draft7Validator(schema, registry=registry, format_checker=FormatChecker())
                    validator.validate(example[part])


def test_every_header_our_processes_set_is_documented():
    """A header added where messages are published, without its description in asyncapi.py, fails here."""
    document = asyncapi.asyncapi_document()
    messages = document["components"]["messages"]
    documented = {name for message in messages.values() for name in message["headers"]["properties"]}
    ours = {
        value
        for module in (message_headers, backfill, internal_amqp)
        for value in vars(module).values()
        if isinstance(value, str) and value.startswith("marketplace-")
    }
    assert ours <= documented, f"not documented in marketplace/events/asyncapi.py: {sorted(ours - documented)}"
    for contract in asyncapi.event_contracts():
        for example in contract.examples:
            published = set(event_message(example)[1]["headers"])
            assert published <= set(messages[contract.key]["headers"]["properties"]), contract.key


def test_the_generator_refuses_a_schema_it_cannot_express(monkeypatch):
    contract = asyncapi.event_contracts()[0]
    schema = {**contract.schema, "properties": {**contract.schema["properties"], "pair": {"prefixItems": [{}]}}}
    monkeypatch.setattr(asyncapi, "event_contracts", lambda: [dataclasses.replace(contract, schema=schema)])

    with pytest.raises(ValueError, match="prefixItems"):
        asyncapi.asyncapi_document()
