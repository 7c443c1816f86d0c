"""The event API as an AsyncAPI 3.0 document, generated from what already declares it.

- the topology (topology.py): exchanges, every subscriber's queue, retry and dead-letter queues
  with their arguments and bindings, the recorder's and the parked queue, who acts on and who
  emits which event type;
- the JSON Schemas (schemas/): one message per (type, version), with the schema's own examples;
- what publishers set (broker.event_message: ENVELOPE_PROPERTIES, ENVELOPE_HEADERS and the W3C
  trace context, tracing.W3C_FIELDS) and the headers retries, dead letters, replays and backfills
  carry (headers.py, backfill.py).

Served at /api/asyncapi.json and committed as docs/asyncapi.json (``manage.py asyncapi --output
docs/asyncapi.json``; tests/events/test_asyncapi.py keeps the copy in step and validates it with
the official parser). A new subscriber, event schema or envelope header changes the document
without an edit here.

Channels are the events exchange, each subscriber's queue, retry queue (one address per wait: a
parameter), route to the dead-letter exchange and dead-letter queue, and the recorder's and the
parked queue. An exchange channel's address is the routing key its publishers use, or the
exchange's name when its type ignores routing keys (fanout, headers). What AMQP bindings 0.3.0
has no field for (queue arguments, a queue's bindings to exchanges) goes in extensions:
``x-queue-arguments`` and ``x-exchange-bindings``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from kombu import Exchange, Queue

from marketplace import tracing
from marketplace.events import headers as message_headers
from marketplace.events import topology
from marketplace.events.backfill import BACKFILL_HEADER
from marketplace.events.broker import ENVELOPE_HEADERS, ENVELOPE_PROPERTIES, event_message
from marketplace.events.envelope import CONTENT_TYPE, SCHEMA_DIR
from marketplace.internals.amqp import UNREADABLE_PROPERTIES, UNREADABLE_PROPERTIES_RAW

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
# Every channel lives in the server's vhost: the server variable, named in the AMQP bindings.
VHOST = "{vhost}"
# The address parameter of a retry queue: its wait in seconds (one queue per distinct wait of the
# subscriber's retry policy, which settings give per deployment).
RETRY_WAIT = "delay"
# A wait no policy uses, put through topology.retry_queue() to find where the wait appears in the
# queue's name and arguments (see _with_wait_parameter).
_PROBE_WAIT = 987_654_321
# JSON Schema 2020-12 keywords with no draft-07 equivalent, which AsyncAPI's schema format extends.
_NOT_IN_DRAFT_07 = frozenset(
    {"prefixItems", "unevaluatedProperties", "unevaluatedItems", "dependentRequired", "dependentSchemas"}
    | {"$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "minContains", "maxContains"}
)

EVENTS_CHANNEL = "events"
RECORDER_CHANNEL = "deadLetterRecorder"
PARKED_CHANNEL = "parked"
TASK_MESSAGE = "subscriberTask"
DEAD_LETTER_MESSAGE = "deadLetter"
PARKED_MESSAGE = "parkedDeadLetter"

# What the headers our own processes set mean. The names come from where they are set; a header
# added there without a line here fails tests/events/test_asyncapi.py.
RETRY_STATE_HEADERS: dict[str, dict[str, Any]] = {
    message_headers.ATTEMPTS: {
        "type": "integer",
        "minimum": 0,
        "description": "Failed attempts so far that count against the subscriber's retry policy.",
    },
    message_headers.INFRA_WAITS: {
        "type": "integer",
        "minimum": 0,
        "description": "Waits for this service's own database to come back; they do not count as attempts.",
    },
    message_headers.WAITING_SINCE: {
        "type": "string",
        "format": "date-time",
        "description": "When the current wait for this service's own database began.",
    },
    message_headers.FIRST_FAILED_AT: {
        "type": "string",
        "format": "date-time",
        "description": "When the first attempt failed.",
    },
    message_headers.REPLAY_OF: {
        "type": "string",
        "description": "The failed event (its id in the admin) this message replays; empty or absent otherwise.",
    },
}
FAILURE_HEADERS: dict[str, dict[str, Any]] = {
    message_headers.LAST_FAILED_AT: {
        "type": "string",
        "format": "date-time",
        "description": "When the attempt that gave up failed.",
    },
    message_headers.EXCEPTION_CLASS: {
        "type": "string",
        "description": "The dotted name of the exception's class.",
    },
    message_headers.EXCEPTION_MESSAGE: {
        "type": "string",
        "maxLength": message_headers.MAX_MESSAGE_CHARS,
        "description": "The exception's message.",
    },
    message_headers.TRACEBACK: {
        "type": "string",
        "maxLength": message_headers.MAX_TRACEBACK_CHARS,
        "description": "The traceback (its end, when longer).",
    },
    message_headers.DEAD_LETTER_ID: {
        "type": "string",
        "format": "uuid",
        "description": "Unique per dead-lettering: the recorder records each one once.",
    },
    UNREADABLE_PROPERTIES: {
        "type": "string",
        "description": "Why the message's AMQP properties could not be decoded; it then has no other property.",
    },
    UNREADABLE_PROPERTIES_RAW: {
        "description": "The undecodable properties' first bytes (an AMQP byte array).",
    },
    "x-death": {
        "type": "array",
        "description": "Set by RabbitMQ when it dead-letters a message itself (the delivery limit reached).",
    },
    "x-first-death-reason": {"type": "string", "description": "Set by RabbitMQ, e.g. delivery_limit."},
    "x-first-death-queue": {"type": "string", "description": "Set by RabbitMQ: the queue the message left."},
}
PARKING_HEADERS: dict[str, dict[str, Any]] = {
    message_headers.PARK_REASON: {
        "type": "string",
        "maxLength": message_headers.MAX_MESSAGE_CHARS,
        "description": "Why the recorder could not record this dead letter.",
    },
    message_headers.ORIGINAL_HEADERS: {
        "type": "string",
        "maxLength": message_headers.MAX_MESSAGE_CHARS,
        "description": "The dead letter's own headers (Python repr), when they could not be kept as headers.",
    },
}
DELIVERY_HEADERS: dict[str, dict[str, Any]] = {
    BACKFILL_HEADER: {
        "const": True,
        "description": "Only on an event republished to one subscriber's queue by `manage.py backfill_events`.",
    },
}


@dataclass(frozen=True)
class EventContract:
    """One (type, version): its JSON Schema, as in schemas/."""

    event_type: str
    version: int
    schema: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.event_type}.v{self.version}"

    @property
    def envelope_field_schemas(self) -> dict[str, Any]:
        properties: dict[str, Any] = self.schema["properties"]
        return properties

    @property
    def examples(self) -> list[dict[str, Any]]:
        examples: list[dict[str, Any]] = self.schema.get("examples", [])
        return examples


def event_contracts() -> list[EventContract]:
    contracts = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        fields = schema["properties"]
        contracts.append(EventContract(fields["type"]["const"], fields["version"]["const"], schema))
    return contracts


def asyncapi_document() -> dict[str, Any]:
    contracts = event_contracts()
    schemas: dict[str, Any] = {}
    for contract in contracts:
        schemas |= _component_schemas(contract)
    channels: dict[str, Any] = {EVENTS_CHANNEL: _exchange_channel(topology.EVENTS_EXCHANGE, contracts)}
    operations: dict[str, Any] = {}
    for contract in contracts:
        operations |= _publish_operations(contract)
    for subscriber in topology.SUBSCRIBERS:
        subscriber_channels, subscriber_operations = _subscriber_part(subscriber, contracts)
        channels |= subscriber_channels
        operations |= subscriber_operations
    channels[RECORDER_CHANNEL] = _queue_channel(
        topology.recorder_queue(),
        [DEAD_LETTER_MESSAGE],
        "Every dead letter of every subscriber: `manage.py record_dead_letters` writes each as a FailedEvent.",
    )
    channels[PARKED_CHANNEL] = _queue_channel(
        topology.parked_queue(),
        [PARKED_MESSAGE],
        "Dead letters the recorder could not record; operators inspect them (nothing consumes this queue).",
    )
    operations[f"{RECORDER_CHANNEL}.receive"] = _operation(
        "receive", RECORDER_CHANNEL, [DEAD_LETTER_MESSAGE], "The dead-letter recorder records every dead letter."
    )
    operations[f"{RECORDER_CHANNEL}.park"] = _operation(
        "send", PARKED_CHANNEL, [PARKED_MESSAGE], "The recorder sets aside a dead letter it cannot record."
    )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "marketplace events",
            "version": settings.SPECTACULAR_SETTINGS["VERSION"],
            "description": (
                "The events this service publishes to RabbitMQ and how its own subscribers receive, retry "
                "and dead-letter them. Generated from marketplace/events/topology.py and the JSON Schemas in "
                "marketplace/events/schemas/ (`manage.py asyncapi`); docs/events.md is the contract in prose. "
                "Consumers bind a queue of their own to the events exchange and deduplicate by the event's `id`."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": _messages(contracts),
            "correlationIds": {
                "envelope": {
                    "description": "The request that caused the event (X-Request-ID), carried on by events it causes.",
                    "location": "$message.payload#/correlation_id",
                },
                "taskEnvelope": {
                    "description": "The correlation id of the event the task message carries.",
                    "location": "$message.payload#/0/0/correlation_id",
                },
            },
            "securitySchemes": {
                "broker": {"type": "userPassword", "description": "The RabbitMQ user and password of BROKER_URL."}
            },
        },
    }


def asyncapi_json() -> str:
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"


@cache
def served_asyncapi_json() -> bytes:
    """What /api/asyncapi.json answers: the document changes only with the code."""
    return asyncapi_json().encode()


# --- servers ---------------------------------------------------------------------------------


def _servers() -> dict[str, Any]:
    return {
        "rabbitmq": {
            "host": "{host}:{port}",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "pathname": f"/{VHOST}",
            "description": "The RabbitMQ of BROKER_URL (several hosts, separated by `;`, on a cluster).",
            "variables": {
                "host": {"description": "A RabbitMQ host.", "examples": ["rabbitmq", "127.0.0.1"]},
                "port": {"default": "5672"},
                "vhost": {
                    "description": (
                        "One per deployment (bin/run names it after the database); exchange and queue names are "
                        "the same in every vhost. URL-encoded: `%2F` is `/`."
                    ),
                    "examples": ["marketplace", "%2F"],
                },
            },
            "security": [{"$ref": "#/components/securitySchemes/broker"}],
        }
    }


# --- channels --------------------------------------------------------------------------------


def _exchange_channel(exchange: Exchange, contracts: list[EventContract]) -> dict[str, Any]:
    return {
        "address": exchange.name,
        "title": f"The {exchange.name} exchange",
        "description": (
            f"Every event, published with an empty routing key to a {exchange.type} exchange: each queue bound "
            "to it gets the events its binding routes. Bind a durable queue of your own."
        ),
        "messages": _message_refs(contract.key for contract in contracts),
        "bindings": {"amqp": _routing_key_binding(exchange)},
    }


def _dead_letter_route_channel(subscriber: topology.Subscriber) -> dict[str, Any]:
    return {
        "address": subscriber.dead_letter_queue_name,
        "title": f"Dead letters of {subscriber.name}",
        "description": (
            f"Routed to {subscriber.dead_letter_queue_name} and to the recorder's queue. {subscriber.queue_name} "
            "dead-letters here itself (x-dead-letter-exchange) when a message reaches its delivery limit."
        ),
        "messages": _message_refs([DEAD_LETTER_MESSAGE]),
        "bindings": {"amqp": _routing_key_binding(topology.DEAD_LETTER_EXCHANGE)},
    }


def _routing_key_binding(exchange: Exchange) -> dict[str, Any]:
    return {
        "is": "routingKey",
        "exchange": {
            "name": exchange.name,
            "type": exchange.type,
            "durable": exchange.durable,
            "autoDelete": exchange.auto_delete,
            "vhost": VHOST,
        },
        "bindingVersion": AMQP_BINDING_VERSION,
    }


def _queue_channel(
    queue: Queue,
    message_keys: list[str],
    description: str,
    *,
    address: str | None = None,
    arguments: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    name = address or queue.name
    binding: dict[str, Any] = {
        "is": "queue",
        "queue": {
            "name": name,
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "autoDelete": queue.auto_delete,
            "vhost": VHOST,
        },
        "bindingVersion": AMQP_BINDING_VERSION,
        "x-queue-arguments": (queue.queue_arguments or {}) if arguments is None else arguments,
    }
    if bindings := _exchange_bindings(queue):
        binding["x-exchange-bindings"] = bindings
    channel: dict[str, Any] = {
        "address": name,
        "title": f"Queue {name}",
        "description": description,
        "messages": _message_refs(message_keys),
        "bindings": {"amqp": binding},
    }
    if parameters:
        channel["parameters"] = parameters
    return channel


def _exchange_bindings(queue: Queue) -> list[dict[str, Any]]:
    """What declaring ``queue`` binds it to, in a stable order."""
    found = [(b.exchange.name, b.routing_key or "", b.arguments or {}) for b in queue.bindings]  # type: ignore[union-attr]  # each binding here names its exchange
    if queue.exchange is not None and queue.exchange.name:
        found.append((queue.exchange.name, queue.routing_key or "", queue.binding_arguments or {}))
    return [
        {"exchange": exchange, "routingKey": routing_key, **({"arguments": arguments} if arguments else {})}
        for exchange, routing_key, arguments in sorted(found, key=lambda found: (found[0], found[1]))
    ]


def _routed_events(queue: Queue, contracts: list[EventContract]) -> list[EventContract]:
    """The events ``queue`` gets from the events exchange, by its bindings there."""
    exchange = topology.EVENTS_EXCHANGE
    routes = [(b.routing_key or "", b.arguments or {}) for b in queue.bindings if b.exchange.name == exchange.name]  # type: ignore[union-attr]  # each binding here names its exchange
    return [c for c in contracts if any(_routes(exchange.type, key, args, _event_headers(c)) for key, args in routes)]


def _routes(exchange_type: str, binding_key: str, arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    """Whether a binding routes an event published with an empty routing key and ``headers``.

    Only header values the schema fixes (a ``const``) can match a headers binding.
    """
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding_key == ""
    if exchange_type == "headers":
        match = str(arguments.get("x-match", "all"))
        wanted = {k: v for k, v in arguments.items() if not k.startswith("x-")}
        hits = [name in headers and headers[name].get("const") == value for name, value in wanted.items()]
        return all(hits) if match.startswith("all") else any(hits)
    raise NotImplementedError(f"routing through a {exchange_type} exchange is not described yet (asyncapi._routes)")


def _with_wait_parameter(value: Any) -> Any:
    """A retry queue's name or argument computed for _PROBE_WAIT, with the wait as the parameter."""
    if isinstance(value, str):
        return value.replace(str(_PROBE_WAIT), f"{{{RETRY_WAIT}}}")
    if isinstance(value, int) and not isinstance(value, bool) and value and value % _PROBE_WAIT == 0:
        return f"{{{RETRY_WAIT}}} * {value // _PROBE_WAIT}"
    return value


# --- a subscriber: its channels and operations ---------------------------------------------------


def _subscriber_part(
    subscriber: topology.Subscriber, contracts: list[EventContract]
) -> tuple[dict[str, Any], dict[str, Any]]:
    routed = _routed_events(subscriber.queue, contracts)
    handled = [c.key for c in routed if c.event_type in subscriber.event_types]
    skipped = sorted({c.event_type for c in routed} - subscriber.event_types)
    retry_queue = subscriber.retry_queue(_PROBE_WAIT)
    queue_channel, retry_channel = f"{subscriber.name}.queue", f"{subscriber.name}.retry"
    route_channel, dead_channel = f"{subscriber.name}.deadLetter", f"{subscriber.name}.dead"
    channels = {
        queue_channel: _queue_channel(
            subscriber.queue,
            [*(c.key for c in routed), TASK_MESSAGE],
            f"The {subscriber.name} subscriber's queue (Celery task {subscriber.task}): the events its bindings "
            "route, and its own task messages (a retry whose wait is over, a replay).",
        ),
        retry_channel: _queue_channel(
            retry_queue,
            [TASK_MESSAGE],
            f"Where a retry of {subscriber.name} waits {{{RETRY_WAIT}}} seconds (x-message-ttl) before it "
            f"expires back into {subscriber.queue_name}, and only there.",
            address=_with_wait_parameter(retry_queue.name),
            arguments={k: _with_wait_parameter(v) for k, v in (retry_queue.queue_arguments or {}).items()},
            parameters={
                RETRY_WAIT: {
                    "description": (
                        "The wait in seconds: one queue per distinct wait of the subscriber's retry policy "
                        f"(SUBSCRIBER_RETRY_{subscriber.name.upper()}) and the wait for its own database."
                    )
                }
            },
        ),
        route_channel: _dead_letter_route_channel(subscriber),
        dead_channel: _queue_channel(
            subscriber.dead_letter_queue,
            [DEAD_LETTER_MESSAGE],
            f"The record of {subscriber.name}'s open failures: resolving or archiving one in the admin removes "
            "its message, so the depth is the number of open failures.",
        ),
    }
    skips = f"; every other event type ({', '.join(skipped)}) is acknowledged and skipped" if skipped else ""
    operations = {
        f"{subscriber.name}.receive": _operation(
            "receive",
            queue_channel,
            [*handled, TASK_MESSAGE],
            f"{subscriber.name} acts on {', '.join(sorted(subscriber.event_types))}{skips}.",
        ),
        f"{subscriber.name}.retry": _operation(
            "send", retry_channel, [TASK_MESSAGE], f"{subscriber.name} retries a transient failure after a wait."
        ),
        f"{subscriber.name}.deadLetter": _operation(
            "send",
            route_channel,
            [DEAD_LETTER_MESSAGE],
            f"{subscriber.name} gives up: a permanent failure, retries exhausted, or a message it cannot read.",
        ),
    }
    return channels, operations


def _publish_operations(contract: EventContract) -> dict[str, Any]:
    emitters = [s.name for s in topology.SUBSCRIBERS if contract.event_type in s.emits]
    properties = _published_properties()
    bindings = {
        "amqp": {
            "deliveryMode": properties["delivery_mode"],
            "timestamp": "timestamp" in properties,
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }
    summary = f"{contract.event_type} version {contract.version}, through the transactional outbox"
    operations = {}
    for name, publisher in [(f"{emitter}.publish", emitter) for emitter in emitters] or [("publish", "The service")]:
        operation = _operation("send", EVENTS_CHANNEL, [contract.key], f"{publisher} publishes {summary}.")
        operations[f"{name}.{contract.key}"] = operation | {"bindings": bindings}
    return operations


def _operation(action: str, channel: str, message_keys: list[str], summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in message_keys],
    }


# --- messages ----------------------------------------------------------------------------------


def _message_refs(keys: Any) -> dict[str, Any]:
    return {key: {"$ref": f"#/components/messages/{key}"} for key in keys}


def _messages(contracts: list[EventContract]) -> dict[str, Any]:
    messages = {contract.key: _event_message(contract) for contract in contracts}
    sample = next((c.examples[0] for c in contracts if c.examples), None)
    messages[TASK_MESSAGE] = _task_message(contracts, sample)
    messages[DEAD_LETTER_MESSAGE] = _dead_letter_message(sample)
    messages[PARKED_MESSAGE] = {
        "name": PARKED_MESSAGE,
        "title": "A dead letter the recorder could not record",
        "description": "The dead letter's bytes and, where they could be kept, its headers, with why.",
        "headers": _headers_schema(PARKING_HEADERS, required=[message_headers.PARK_REASON]),
        "payload": {"description": "The dead letter's body, byte for byte."},
        "examples": [
            {
                "name": "unrecordable",
                "headers": {message_headers.PARK_REASON: "the dead letter names no subscriber"},
                "payload": sample or {},
            }
        ],
    }
    return messages


def _published_properties() -> dict[str, Any]:
    """The AMQP properties every event is published with, whatever its envelope."""
    return event_message({})[1]


def _event_message(contract: EventContract) -> dict[str, Any]:
    properties = _published_properties()
    examples = [
        {"name": f"{contract.key}-{index}", "headers": event_message(example)[1]["headers"], "payload": example}
        for index, example in enumerate(contract.examples, start=1)
    ]
    headers = _event_headers(contract)
    required = [name for name, field in ENVELOPE_HEADERS.items() if field in contract.schema.get("required", [])]
    return {
        "name": contract.event_type,
        "title": contract.schema.get("title", contract.key),
        "description": contract.schema.get("description", ""),
        "contentType": properties["content_type"],
        "correlationId": {"$ref": "#/components/correlationIds/envelope"},
        "headers": _headers_schema(headers | DELIVERY_HEADERS, required=required),
        "payload": {"$ref": f"#/components/schemas/{contract.key}"},
        "bindings": {
            "amqp": {
                "contentEncoding": properties["content_encoding"],
                "messageType": contract.event_type,
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
        "examples": examples,
        # AMQP 0.9.1 properties have no field in AsyncAPI's message object or AMQP bindings.
        "x-amqp-properties": {
            **{name: f"$message.payload#/{field}" for name, field in ENVELOPE_PROPERTIES.items()},
            "delivery_mode": properties["delivery_mode"],
            "timestamp": "when the message was published (POSIX seconds), not when the event occurred",
        },
    }


def _event_headers(contract: EventContract) -> dict[str, Any]:
    """The headers publishers set from envelope fields, each with the schema of its field."""
    fields = contract.envelope_field_schemas
    if missing := sorted({*ENVELOPE_HEADERS.values(), *tracing.W3C_FIELDS} - fields.keys()):
        raise ValueError(f"messages carry {missing} as headers, which {contract.key}'s schema does not describe")
    copies = {
        name: _described(
            _component_schema(contract, fields[field]),
            f"A copy of the envelope's `{field}`, to route or filter by without parsing the body.",
        )
        for name, field in ENVELOPE_HEADERS.items()
    }
    trace_context = {
        name: _component_schema(contract, fields[name])
        | {
            "description": (
                f"W3C Trace Context `{name}` of the span that published this message (else the envelope's own "
                f"`{name}`, that of the operation that created the event): continue the trace from it."
            )
        }
        for name in tracing.W3C_FIELDS
    }
    return copies | trace_context


def _task_message(contracts: list[EventContract], sample: dict[str, Any] | None) -> dict[str, Any]:
    example_subscriber = next((s for s in topology.SUBSCRIBERS if sample and sample["type"] in s.event_types), None)
    examples = []
    if sample is not None and example_subscriber is not None:
        examples.append(
            {
                "name": "retry",
                "headers": {
                    "task": example_subscriber.task,
                    "id": example_subscriber.adopted_task_id(sample["id"]),
                    message_headers.ATTEMPTS: 1,
                    message_headers.FIRST_FAILED_AT: "2025-03-14T09:26:54.012Z",
                    message_headers.REPLAY_OF: "",
                },
                "payload": [[sample], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
            }
        )
    celery_headers = {
        "task": {"enum": [s.task for s in topology.SUBSCRIBERS], "description": "The subscriber's Celery task."},
        "id": {
            "type": "string",
            "format": "uuid",
            "description": "The task id: the same for every delivery, retry and replay of one event to one subscriber.",
        },
    }
    return {
        "name": TASK_MESSAGE,
        "title": "A subscriber's task message",
        "description": (
            "A subscriber's worker turns each event it handles into a Celery task message (protocol 2) in memory; "
            "it publishes one to its own queues for a retry, and a replay from the admin arrives as one. The "
            "retry state travels in its headers, next to Celery's own."
        ),
        "contentType": CONTENT_TYPE,
        "correlationId": {"$ref": "#/components/correlationIds/taskEnvelope"},
        "headers": _headers_schema(celery_headers | RETRY_STATE_HEADERS, required=["task", "id"]),
        "payload": {
            "type": "array",
            "description": "[args, kwargs, embed]: args holds the event envelope alone.",
            "minItems": 3,
            "maxItems": 3,
            "items": [
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": [{"oneOf": [{"$ref": f"#/components/schemas/{c.key}"} for c in contracts]}],
                },
                {"type": "object", "maxProperties": 0},
                {"type": "object"},
            ],
        },
        "examples": examples,
    }


def _dead_letter_message(sample: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": DEAD_LETTER_MESSAGE,
        "title": "A dead letter",
        "description": (
            "A message a subscriber gave up on, with the failure in its headers: usually its task message, or the "
            "event or bytes as they reached the queue when it could not read them. A message that reached the "
            "queue's delivery limit is dead-lettered by RabbitMQ, with x-death headers instead."
        ),
        "headers": _headers_schema(RETRY_STATE_HEADERS | FAILURE_HEADERS),
        "payload": {"description": "The failed message's body, byte for byte."},
        "examples": [
            {
                "name": "given-up",
                "headers": {
                    message_headers.ATTEMPTS: 6,
                    message_headers.FIRST_FAILED_AT: "2025-03-14T09:26:54.012Z",
                    message_headers.LAST_FAILED_AT: "2025-03-14T09:27:56.530Z",
                    message_headers.EXCEPTION_CLASS: "marketplace.mail.EmailNotSent",
                    message_headers.EXCEPTION_MESSAGE: "email to alice@example.com not sent via smtp.example:25",
                    message_headers.TRACEBACK: "Traceback (most recent call last): ...",
                    message_headers.DEAD_LETTER_ID: "3e2b7f0a-8c41-4d9e-b6a5-7f1c2d3e4a5b",
                },
                "payload": sample or {},
            }
        ],
    }


def _headers_schema(headers: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": headers}
    if required:
        schema["required"] = required
    return schema


# --- payload schemas -----------------------------------------------------------------------------


def _component_schemas(contract: EventContract) -> dict[str, Any]:
    """The contract's schema, and each of its $defs, as components.schemas entries: the document
    is one JSON tree, so "#/$defs/x" becomes "#/components/schemas/<type>.v<version>.x"."""
    schema = copy.deepcopy(contract.schema)
    for annotation in ("$schema", "$id", "examples"):  # the examples become the message's
        schema.pop(annotation, None)
    definitions = schema.pop("$defs", {})
    return {
        contract.key: _component_schema(contract, schema),
        **{
            f"{contract.key}.{name}": _component_schema(contract, definition)
            for name, definition in definitions.items()
        },
    }


def _component_schema(contract: EventContract, node: Any) -> Any:
    """A JSON Schema 2020-12 node as AsyncAPI's schema format (a superset of draft 07) reads it."""
    if isinstance(node, list):
        return [_component_schema(contract, item) for item in node]
    if not isinstance(node, dict):
        return node
    if unsupported := _NOT_IN_DRAFT_07 & node.keys():
        raise ValueError(f"{contract.key}: {sorted(unsupported)} has no AsyncAPI (draft 07) equivalent")
    converted = {key: _component_schema(contract, value) for key, value in node.items()}
    if "$ref" in converted:
        reference = converted.pop("$ref")
        if not reference.startswith("#/$defs/"):
            raise ValueError(f"{contract.key}: cannot move the reference {reference!r} into the document")
        target = {"$ref": f"#/components/schemas/{contract.key}.{reference.removeprefix('#/$defs/')}"}
        # Draft 07 ignores a $ref's siblings; 2020-12 applies them.
        return {"allOf": [target], **converted} if converted else target
    return converted


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``schema`` with ``description`` before its own."""
    own = schema.get("description")
    described = {"allOf": [schema]} if "$ref" in schema else dict(schema)
    return described | {"description": f"{description} {own}" if own else description}
