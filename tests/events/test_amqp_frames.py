"""The py-amqp seam (marketplace/events/amqp_frames.py): what it relies on is still there, and a
header frame py-amqp cannot decode becomes a message that says so instead of a lost connection."""

import struct

import amqp
import pytest
from amqp import serialization
from amqp.spec import Basic

from marketplace.events import amqp_frames


def _headers_frame(table: bytes) -> bytes:
    """Basic properties holding only application headers: the flags, then the table."""
    return struct.pack(">H", 0x2000) + struct.pack(">I", len(table)) + table


def test_py_amqp_still_decodes_basic_properties_through_its_property_table():
    # If an upgrade moves either, amqp_frames.install() patches nothing and this fails: see its docstring.
    assert Basic.CLASS_ID in serialization.PROPERTY_CLASSES, "amqp.serialization.PROPERTY_CLASSES changed"
    assert amqp_frames._decode_properties_basic is serialization.decode_properties_basic
    assert serialization.PROPERTY_CLASSES[Basic.CLASS_ID] is amqp_frames.tolerant_properties, (
        "marketplace.celery did not install amqp_frames: readers would stop on undecodable header frames"
    )


def test_py_amqp_channels_still_take_auto_decode():
    assert "auto_decode" in amqp.Channel.__init__.__code__.co_varnames, "amqp_frames.raw_bodies relies on it"


def test_decodable_properties_are_decoded_as_py_amqp_does():
    table = b"\x01k" + b"S" + struct.pack(">I", 2) + b"ok"
    assert amqp_frames.tolerant_properties(_headers_frame(table), 0) == serialization.decode_properties_basic(
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

    properties, _ = amqp_frames.tolerant_properties(frame, 0)

    headers = properties["application_headers"]
    assert headers[amqp_frames.UNREADABLE_PROPERTIES]
    assert headers[amqp_frames.UNREADABLE_PROPERTIES_RAW] == frame
