"""The contract with the frameworks' internals: every private or undocumented attribute that
marketplace/internals/ relies on, one test each. After an upgrade (docs/upgrading.md), a failure
here names the attribute and the module of marketplace/internals/ to mend.

Also: a header frame py-amqp cannot decode becomes a message that says so, not a lost connection.
"""

import json
import struct
import uuid

import amqp
import pytest
from amqp import serialization
from amqp.spec import Basic
from celery.app.task import Context
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.request import Request
from kombu import Connection, Exchange, Queue
from kombu import Consumer as KombuConsumer

from marketplace.celery import app
from marketplace.internals import amqp as amqp_internals
from marketplace.internals import celery as celery_internals
from marketplace.internals import kombu as kombu_internals
from marketplace.internals.django import cache_prefetched
from notifications.tasks import send_order_confirmation
from orders.models import Order, OrderLine

pytestmark = [pytest.mark.contract]


def _headers_frame(table: bytes) -> bytes:
    """Basic properties holding only application headers: the flags, then the table."""
    return struct.pack(">H", 0x2000) + struct.pack(">I", len(table)) + table


def test_py_amqp_still_decodes_basic_properties_through_its_property_table():
    # If an upgrade moves either, amqp_internals.install() patches nothing and this fails: see its docstring.
    assert Basic.CLASS_ID in serialization.PROPERTY_CLASSES, "amqp.serialization.PROPERTY_CLASSES changed"
    assert amqp_internals._decode_properties_basic is serialization.decode_properties_basic
    assert serialization.PROPERTY_CLASSES[Basic.CLASS_ID] is amqp_internals.tolerant_properties, (
        "marketplace.celery did not install marketplace.internals.amqp: readers would stop on undecodable header frames"
    )


def test_py_amqp_channels_still_take_auto_decode():
    assert "auto_decode" in amqp.Channel.__init__.__code__.co_varnames, "amqp_internals.raw_bodies relies on it"


def test_decodable_properties_are_decoded_as_py_amqp_does():
    table = b"\x01k" + b"S" + struct.pack(">I", 2) + b"ok"
    assert amqp_internals.tolerant_properties(_headers_frame(table), 0) == serialization.decode_properties_basic(
        _headers_frame(table), 0
    )


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(_headers_frame(b"\x01t" + b"T" + struct.pack(">Q", 2**63)), id="timestamp past year 9999"),
        pytest.param(_headers_frame(b"\x01t" + b"?"), id="unknown field type"),
        pytest.param(struct.pack(">HB", 0x8000, 2) + b"\xff\xfe", id="content type not UTF-8"),
    ],
)
def test_undecodable_properties_become_a_header_that_says_so(frame):
    with pytest.raises(Exception):  # noqa: B017, PT011 - what py-amqp raises varies by case
        serialization.decode_properties_basic(frame, 0)

    properties, _ = amqp_internals.tolerant_properties(frame, 0)

    headers = properties["application_headers"]
    assert headers[amqp_internals.UNREADABLE_PROPERTIES]
    assert headers[amqp_internals.UNREADABLE_PROPERTIES_RAW] == frame


# --- kombu (marketplace/internals/kombu.py) -------------------------------------------------------


def test_kombu_consumers_still_keep_each_queues_consumer_tag():
    with Connection("memory://") as connection:
        queue = Queue("contract.q", Exchange("contract", type="direct"), routing_key="k")
        consumer = KombuConsumer(connection.channel(), queues=[queue], auto_declare=True)
        consumer.consume()
        tags = kombu_internals.active_tags(consumer)
        assert list(tags) == ["contract.q"], (
            "kombu.Consumer._active_tags changed: mend marketplace/internals/kombu.py (the worker can no longer "
            "tell which subscriber queue a message came from)"
        )
        assert kombu_internals.queue_of_consumer_tag(consumer, tags["contract.q"]) == "contract.q"


def test_kombu_messages_still_cache_their_decoded_payload_where_we_reset_it():
    with Connection("memory://") as connection:
        queue = Queue("contract.decoded", Exchange("contract", type="direct"), routing_key="d")
        queue(connection.channel()).declare()
        connection.Producer().publish({"a": 1}, exchange="contract", routing_key="d", declare=[queue])
        message = queue(connection.channel()).get()
        assert message.decode() == {"a": 1}
        message.body = b'{"a": 2}'
        assert message.decode() == {"a": 1}, "kombu no longer caches decode(): the reset in internals/kombu.py is moot"
        kombu_internals.forget_decoded_payload(message)
        assert message.decode() == {"a": 2}, (
            "kombu.Message._decoded_cache changed: mend marketplace/internals/kombu.py (an adopted event would "
            "reach the task as the raw envelope, not as a task message)"
        )


# --- Celery (marketplace/internals/celery.py) -------------------------------------------------------


def test_celery_still_names_its_delayed_delivery_step_as_we_remove_it():
    steps = CeleryConsumer.Blueprint.default_steps
    without = celery_internals.without_step(steps, "DelayedDelivery")
    assert len(without) == len(steps) - 1, (
        "celery.worker.consumer.Consumer.Blueprint.default_steps has no ...:DelayedDelivery step any more: "
        "mend marketplace/internals/celery.py (or drop the removal if Celery no longer adds it)"
    )


def test_celery_task_messages_still_have_the_protocol_2_body_we_splice():
    envelope = {"id": str(uuid.uuid4()), "type": "order.placed"}
    headers, body = celery_internals.task_message_body(
        app, "task-id", "notifications.send_order_confirmation", args_json=json.dumps(envelope).encode()
    )
    args, kwargs, embed = json.loads(body)
    assert args == [envelope], "as_task_v2's body is no longer [args, kwargs, embed]: mend internals/celery.py"
    assert kwargs == {}
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    assert headers["id"] == "task-id"
    assert headers["task"] == "notifications.send_order_confirmation"


class _Message:
    """What a worker's Request reads of a delivered message."""

    def __init__(self, headers: dict, body: bytes):
        self.headers, self.body = headers, body
        self.content_type, self.content_encoding = "application/json", "utf-8"
        self.delivery_info = {"exchange": "", "routing_key": "q", "priority": 0, "redelivered": False}
        self.properties = {}
        self.payload = json.loads(body)


def test_celery_still_makes_custom_headers_request_attributes():
    headers, body = celery_internals.task_message_body(app, "task-id", "some.task", args_json=b"{}")
    headers = {**headers, "marketplace-attempts": 3}
    request = Request(_Message(headers, body), app=app, task=send_order_confirmation)
    context = Context(request.request_dict)
    assert celery_internals.request_header(context, "marketplace-attempts") == 3, (
        "Celery no longer copies a task message's custom headers into task.request: mend "
        "marketplace/internals/celery.py (retries would restart their count, dead letters lose their history)"
    )


def test_celery_tasks_still_build_a_signature_from_their_request():
    task = send_order_confirmation
    request = Context({"id": "task-id", "args": [{"id": "e"}], "kwargs": {}, "headers": {}, "retries": 1})
    signature = celery_internals.republish_signature(task, request, queue="marketplace.q", retries=2)
    assert signature.id == "task-id", "Task.signature_from_request changed: mend marketplace/internals/celery.py"
    assert signature.args == ({"id": "e"},) or list(signature.args) == [{"id": "e"}]
    assert signature.options["queue"] == "marketplace.q"


# --- Django (marketplace/internals/django.py) -----------------------------------------------------


def test_django_prefetch_cache_still_answers_related_queries_without_the_database():
    order = Order(pk=1)
    line = OrderLine(order=order, quantity=1)
    cache_prefetched(order, "lines", [line])
    # No database here (no db fixture): any query would fail this test.
    assert list(order.lines.all()) == [line], (
        "Django's prefetch cache attributes changed: mend marketplace/internals/django.py"
    )
