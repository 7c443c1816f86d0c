"""The one place that reaches into py-amqp: reading a message's properties must never fail.

py-amqp decodes a message's header frame (content type, headers, ...) while it reads the
connection, before any consumer callback runs. A header frame it cannot decode raises there: an
AMQP timestamp past year 9999, a short string that is not UTF-8 (a content type, a message id),
a table nested deeper than Python's recursion limit. The exception leaves the connection, so
every consumer on it (a Celery worker, the recorder) takes it for a lost broker, reconnects, and
is handed the same message again: one message from any non-Python publisher stops a subscriber.

``install()`` wraps py-amqp's decoder of basic properties (``amqp.serialization.PROPERTY_CLASSES``
is a module-level table, not a documented API: tests/events/test_amqp_frames.py fails, naming it,
if an upgrade moves it). A header frame that cannot be decoded becomes a message whose only
header says so and keeps the undecoded bytes; its body arrives intact, so the reader that
receives it records it like any other unreadable message.
"""

from __future__ import annotations

import logging
from typing import Any

from amqp import serialization
from amqp.spec import Basic

logger = logging.getLogger(__name__)

UNREADABLE_PROPERTIES = "marketplace-unreadable-properties"
UNREADABLE_PROPERTIES_RAW = "marketplace-unreadable-properties-raw"
# Kept of the undecodable properties: enough to inspect, well inside RabbitMQ's 128 KiB frame.
RAW_PROPERTIES_BYTES = 16 * 1024


def tolerant_properties(buf: Any, offset: int) -> tuple[dict[str, Any], int]:
    try:
        return _decode_properties_basic(buf, offset)
    except Exception as exc:  # any failure to decode untrusted bytes
        logger.error("a message's AMQP properties could not be decoded (%s: %s)", type(exc).__name__, exc)
        headers = {
            UNREADABLE_PROPERTIES: f"{type(exc).__name__}: {exc}"[:1000],
            UNREADABLE_PROPERTIES_RAW: bytes(buf[offset : offset + RAW_PROPERTIES_BYTES]),
        }
        return {"application_headers": headers}, len(buf)


_decode_properties_basic = serialization.decode_properties_basic


def raw_bodies(channel: Any) -> Any:
    """``channel``, set to hand over every body as the bytes that were sent. By default py-amqp
    decodes a body by its content encoding (when it can), and encoding it back does not always
    give those bytes (utf-16 gains a byte-order mark): who records a message must keep it exact.
    ``auto_decode`` is py-amqp's documented Channel parameter; kombu creates channels without it."""
    channel.auto_decode = False
    return channel


def install() -> None:
    """Idempotent; every process that reads messages calls it once (marketplace/celery.py)."""
    # amqp-stubs declare the table as {class id: properties class}; py-amqp holds decoder functions there.
    serialization.PROPERTY_CLASSES[Basic.CLASS_ID] = tolerant_properties  # type: ignore[assignment]  # stub: decoders, not classes
