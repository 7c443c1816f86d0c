"""Hypothesis strategies for hostile AMQP messages: whatever a buggy or hostile producer with
publish rights can put on the wire (issue 16).

A message is a ``HostileMessage``: body bytes, content type and encoding, headers and the other
basic properties, every value one py-amqp can encode, so that publishing it succeeds (or, for
what RabbitMQ itself refuses, fails at the publish, never later in a reader of ours).

Limits the wire imposes, kept here so that a generated message is always publishable:

- The content header frame (every property, headers included) must fit in one frame: RabbitMQ's
  frame_max is 128 KiB, and a larger header frame makes it close the connection (FRAME_ERROR)
  instead of delivering anything. ``MAX_HEADER_FRAME`` keeps the encoded properties well inside.
- Short strings (message_id, correlation_id, type, app_id, reply_to, content_type and encoding,
  every table key) are at most 255 bytes of UTF-8.
- user_id must equal the connection's user (RabbitMQ refuses the publish otherwise): "guest" or
  absent. expiration is given in seconds (kombu sends milliseconds as text); ``properties(live=True)``
  never sets a short one, which would expire a message before a worker could decide about it and
  make the live oracle a race.
- A double in a header table is finite: RabbitMQ cannot parse NaN or infinity (its channel crashes
  with INTERNAL_ERROR 541 at the publish), so none ever reaches a reader.
- Header ints are signed 64-bit; a Decimal is a 32-bit signed integer over 10**(0..255); a
  timestamp is unsigned seconds since 1970 (py-amqp cannot encode an earlier datetime).

``received(message)`` is what a reader of ours gets out of the broker for it: the headers after
py-amqp's table encoding and decoding (bytes that are UTF-8 come back as str, datetimes come
back naive UTC, tuples as lists), and the body as py-amqp hands it over (decoded by its
content_encoding when that codec accepts the bytes).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from amqp import serialization
from amqp.basic_message import Message as AmqpMessage
from amqp.spec import Basic
from hypothesis import strategies as st

from marketplace.events import topology
from marketplace.events.headers import (
    ATTEMPTS,
    DEAD_LETTER_ID,
    EXCEPTION_CLASS,
    EXCEPTION_MESSAGE,
    FIRST_FAILED_AT,
    INFRA_WAITS,
    LAST_FAILED_AT,
    REPLAY_OF,
    TRACEBACK,
    WAITING_SINCE,
)

# RabbitMQ's default frame_max is 131072 bytes; the content header frame also carries the other
# properties and the frame's own overhead. Beyond this the publish fails (FRAME_ERROR).
FRAME_MAX = 131_072
MAX_HEADER_FRAME = 100_000
SHORTSTR = 255


TASK_NAMES = sorted({s.task for s in topology.SUBSCRIBERS})
EVENT_TYPES = sorted({t for s in topology.SUBSCRIBERS for t in s.event_types})
OUR_HEADER_KEYS = [
    "task",
    "id",
    "lang",
    "root_id",
    "parent_id",
    "group",
    "retries",
    "eta",
    "expires",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "event_type",
    "event_version",
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-delivery-count",
    ATTEMPTS,
    INFRA_WAITS,
    WAITING_SINCE,
    FIRST_FAILED_AT,
    LAST_FAILED_AT,
    EXCEPTION_CLASS,
    EXCEPTION_MESSAGE,
    TRACEBACK,
    DEAD_LETTER_ID,
    REPLAY_OF,
]
RETRY_STATE_HEADERS = [
    ATTEMPTS,
    INFRA_WAITS,
    WAITING_SINCE,
    FIRST_FAILED_AT,
    REPLAY_OF,
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-python-serialize",
    "application/x-yaml",
    "application/data",
    "application/x-msgpack",
    "application/octet-stream",
    "",
]
CONTENT_ENCODINGS = [
    "utf-8",
    "UTF8",
    "binary",
    "utf-16",
    "utf-16-le",
    "utf-32",
    "latin-1",
    "ascii",
    "utf-7",
    "idna",
    "punycode",
    "gzip",
    "x-gzip",
    "deflate",
    "zlib",
    "base64",
    "hex",
    "rot13",
    "",
]


@dataclass(frozen=True)
class HostileMessage:
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # short enough to read in a Hypothesis report
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return (
            f"HostileMessage(body={body!r}, content_type={self.content_type!r}, "
            f"content_encoding={self.content_encoding!r}, headers={_short(self.headers)}, "
            f"properties={self.properties!r})"
        )

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's pretty printer
        printer.text(repr(self))

    def publish_options(self) -> dict[str, Any]:
        """Keyword arguments for kombu's Producer.publish (with ``serializer=None``)."""
        return {
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "headers": self.headers,
            **self.properties,
        }


def _short(value: Any, limit: int = 2000) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


# --- bodies --------------------------------------------------------------------------------


def sizes(max_size: int) -> st.SearchStrategy[int]:
    """Body sizes skewed small: mostly under 1 KiB, sometimes up to ``max_size``."""
    small = st.integers(0, 1024)
    edges = st.sampled_from([n for n in (0, 1, 4095, 4096, 65_535, 131_072, 131_073, max_size) if n <= max_size])
    large = st.integers(1025, max(1025, max_size))
    return st.one_of(small, small, small, edges, large) if max_size > 1024 else small


@st.composite
def sized_bytes(draw, max_size: int) -> bytes:
    """Bytes of any size, built cheaply: a drawn chunk repeated (random megabytes are slow to draw)."""
    size = draw(sizes(max_size))
    if size <= 256:
        return draw(st.binary(min_size=size, max_size=size))
    chunk = draw(st.binary(min_size=1, max_size=64))
    return (chunk * (size // len(chunk) + 1))[:size]


def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**200), max_value=2**200),
        st.floats(allow_nan=True, allow_infinity=True),
        st.just(-0.0),
        st.text(),
        st.text(alphabet=st.characters(codec="utf-8")),
        st.sampled_from(["\x00", "\ud800", "a\x00b", "\udfff\ud800", "\u2028", "\ufeff"]),
    )


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars(),
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
        max_leaves=max_leaves,
    )


def numeric_texts() -> st.SearchStrategy[str]:
    """Numbers JSON text can spell that Python's json turns into surprises."""
    return st.one_of(
        st.sampled_from(
            ["-0", "-0.0", "0e0", "1e999", "-1e999", "1E-400", "NaN", "Infinity", "-Infinity", "1.0e+308", "5e-324"]
        ),
        st.integers(1, 20_000).map(lambda n: "9" * n),  # over 4300 digits: ValueError in int()
        st.integers(-400, 400).map(lambda e: f"1.5e{e}"),
    )


def deep_json_text() -> st.SearchStrategy[bytes]:
    """Deeply nested JSON as raw text (json.dumps of it would itself overflow the stack)."""
    # Well inside or well beyond what a reader's json can parse at Python's default recursion limit
    # (about 1000 levels): nothing near it, where the reader's own stack depth decides.
    depth = st.sampled_from([10, 100, 5_000, 10_000, 100_000])
    inner = st.sampled_from(["", "1", '"x"', "null"])

    def nest(args):
        depth, kind, leaf = args
        if kind == "list":
            return "[" * depth + leaf + "]" * depth
        if kind == "dict":
            return '{"a":' * depth + (leaf or "1") + "}" * depth
        # An envelope whose data is deep: looks like an event until the decoder recurses.
        return (
            f'{{"specversion":"1.0","id":"{uuid.uuid4()}","type":"order.placed","version":1,"data":'
            + "[" * depth
            + leaf
            + "]" * depth
            + "}"
        )

    return st.tuples(depth, st.sampled_from(["list", "dict", "envelope"]), inner).map(nest).map(str.encode)


def uuids_or_garbage() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: f"{{{u}}}"),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
        st.just(""),
        st.text(max_size=40),
        st.integers(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    )


@st.composite
def envelopes(draw) -> dict[str, Any]:
    """JSON that looks like an event envelope, with any field wrong, missing or extra."""
    envelope: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "2.0", 1, None])),
        "id": draw(uuids_or_garbage()),
        "type": draw(
            st.one_of(st.sampled_from([*EVENT_TYPES, "order.shipped", ""]), st.text(max_size=200), st.integers())
        ),
        "version": draw(st.one_of(st.sampled_from([1, 2, 0, -1, "1"]), st.integers(), st.floats())),
        "source": draw(st.sampled_from(["marketplace/orders", "", "evil"])),
        "occurred_at": draw(st.sampled_from(["2025-03-14T09:26:53Z", "yesterday", "", "2025-03-14T09:26:53+00:00"])),
        "correlation_id": draw(st.text(max_size=20)),
        "datacontenttype": "application/json",
        "data": draw(json_values(15)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(envelope)), max_size=3, unique=True)):
        del envelope[key]
    envelope |= draw(st.dictionaries(st.text(max_size=10), json_values(5), max_size=2))
    return envelope


@st.composite
def task_bodies(draw) -> Any:
    """A Celery protocol 2 body ``[args, kwargs, embed]`` of any (wrong) shape."""
    args = draw(st.one_of(st.lists(st.one_of(envelopes(), json_values(5)), max_size=3), json_values(3)))
    kwargs = draw(
        st.one_of(st.just({}), st.dictionaries(st.text(max_size=10), json_values(3), max_size=2), json_values(2))
    )
    embed = draw(
        st.one_of(
            st.just({"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
            st.just({}),
            json_values(3),
        )
    )
    shape = draw(st.sampled_from(["full", "short", "long", "dict", "args-only"]))
    return {
        "full": [args, kwargs, embed],
        "short": [args],
        "long": [args, kwargs, embed, embed],
        "dict": {"args": args, "kwargs": kwargs},
        "args-only": args,
    }[shape]


@st.composite
def task_headers(draw) -> dict[str, Any]:
    """Celery protocol 2 headers, any of them wrong."""
    headers: dict[str, Any] = {
        "lang": draw(st.sampled_from(["py", "js", "", None])),
        "task": draw(st.one_of(st.sampled_from([*TASK_NAMES, "nobody.knows.this", ""]), amqp_values(2))),
        "id": draw(st.one_of(st.uuids().map(str), amqp_values(1))),
        "root_id": draw(st.one_of(st.uuids().map(str), st.none())),
        "parent_id": None,
        "group": None,
        "retries": draw(st.one_of(st.integers(-5, 10), amqp_values(1))),
        "eta": draw(st.sampled_from([None, "2025-01-01T00:00:00", "not a date", 5])),
        "expires": draw(st.sampled_from([None, "2020-01-01T00:00:00+00:00", "soon", 1.5])),
        "timelimit": draw(st.sampled_from([[None, None], [1, 1], "x", None])),
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "hostile",
        "ignore_result": draw(st.one_of(st.booleans(), amqp_values(1))),
    }
    for key in draw(st.lists(st.sampled_from(sorted(headers)), max_size=3, unique=True)):
        if key != "task":
            del headers[key]
    return headers


def text_in(encoding: str) -> st.SearchStrategy[bytes]:
    def encode(text: str) -> bytes:
        try:
            return text.encode(encoding, errors="surrogatepass")
        except (UnicodeError, LookupError):
            return text.encode("utf-8", errors="surrogatepass")

    return st.text(max_size=200).map(encode)


def bodies(max_size: int = 65_536) -> st.SearchStrategy[bytes]:
    def dumped(value: Any) -> bytes:
        return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")

    return st.one_of(
        sized_bytes(max_size),
        json_values().map(dumped),
        numeric_texts().map(str.encode),
        st.tuples(st.uuids(), numeric_texts()).map(
            lambda t: f'{{"id":"{t[0]}","type":"order.placed","data":{{"n":{t[1]}}}}}'.encode()
        ),
        deep_json_text(),
        envelopes().map(dumped),
        task_bodies().map(dumped),
        st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig"]).flatmap(text_in),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'""', b"\xef\xbb\xbf{}", b"\x00", b"\xff\xfe{\x00}\x00"]),
    )


# --- header values ---------------------------------------------------------------------------


def header_keys() -> st.SearchStrategy[str]:
    """Table keys: ours and RabbitMQ's, empty, unicode, as long as a short string allows."""
    return st.one_of(
        st.sampled_from(OUR_HEADER_KEYS),
        st.sampled_from(["", " ", "\x00", "ü", "é" * 127, "k" * SHORTSTR, "x-", "X-Death"]),
        st.text(max_size=30),
    ).filter(lambda key: len(key.encode("utf-8", errors="surrogatepass")) <= SHORTSTR)


def _decimals() -> st.SearchStrategy[Decimal]:
    # py-amqp writes a Decimal as (scale: unsigned byte, value: signed 32-bit int).
    return st.tuples(st.integers(-(2**31) + 1, 2**31 - 1), st.integers(0, 255)).map(
        lambda t: Decimal(t[0]).scaleb(-t[1])
    )


class FarFuture(datetime):
    """A header timestamp past year 9999: py-amqp writes it (seconds since 1970 as an unsigned
    64-bit int, as a non-Python publisher may), but cannot read it back into a datetime."""

    seconds: int = 2**40

    def utctimetuple(self):
        return _FarTuple(self.seconds)


class _FarTuple(tuple):
    """What calendar.timegm needs to give back ``seconds``."""

    def __new__(cls, seconds: int):
        days, rest = divmod(seconds, 86_400)
        return super().__new__(cls, (1970, 1, 1 + days, rest // 3600, rest // 60 % 60, rest % 60, 0, 0, 0))


def far_future(seconds: int) -> FarFuture:
    value = FarFuture(9999, 12, 31)
    value.seconds = seconds
    return value


class DeepTable(dict):
    """A header table nested ``depth`` levels deep, shown short (printing it would overflow the stack)."""

    depth = 0

    def __repr__(self) -> str:
        return f"deep_table({self.depth})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's pretty printer
        printer.text(repr(self))


def deep_table(depth: int) -> dict[str, Any]:
    """A header table nested ``depth`` levels deep (the publisher needs ``deep_recursion()``)."""
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"t": table}
    deep = DeepTable(t=table)
    deep.depth = depth + 1
    return deep


@contextmanager
def deep_recursion(limit: int = 50_000):
    """Encode deep header tables: py-amqp writes them recursively, like it reads them."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def amqp_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(max_size=50),
        st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\udcff\udcfe", "1", "-1", "1e9", "NaN", "5.5", "abc"]),
        st.text(min_size=1, max_size=5).map(lambda s: s * 1000),  # a long string
        st.binary(max_size=40),
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([0, -1, 2**31, -(2**31), 2**63 - 1, -(2**63), 4294967295]),
        st.booleans(),
        # Only finite doubles: RabbitMQ cannot parse a NaN or infinite 'd' in a table (its channel
        # crashes with INTERNAL_ERROR 541 at the publish), so no reader of ours ever receives one.
        st.floats(allow_nan=False, allow_infinity=False),
        st.just(-0.0),
        _decimals(),
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)),
        st.sampled_from([253402300800, 2**40, 2**63, 2**64 - 1]).map(far_future),
        st.none(),
    )


def amqp_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    return st.recursive(
        amqp_scalars(),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(header_keys(), children, max_size=4),
        max_leaves=max_leaves,
    )


def x_death_values() -> st.SearchStrategy[Any]:
    """``x-death`` as RabbitMQ writes it (a list of tables), or anything else under that name."""
    entry = st.fixed_dictionaries(
        {},
        optional={
            "count": amqp_scalars(),
            "reason": st.one_of(st.sampled_from(["rejected", "expired", "maxlen", "delivery_limit"]), amqp_scalars()),
            "queue": st.one_of(st.sampled_from([s.queue_name for s in topology.SUBSCRIBERS]), amqp_scalars()),
            "time": st.one_of(st.datetimes(min_value=datetime(1970, 1, 1)), amqp_scalars()),
            "exchange": st.sampled_from(["", "marketplace.events"]),
            "routing-keys": st.lists(st.text(max_size=10), max_size=2),
        },
    )
    return st.one_of(st.lists(st.one_of(entry, amqp_scalars()), max_size=3), amqp_values(4))


@st.composite
def hostile_headers(draw) -> dict[str, Any]:
    headers: dict[str, Any] = draw(st.dictionaries(header_keys(), amqp_values(), max_size=6))
    if draw(st.booleans()):
        headers["x-death"] = draw(x_death_values())
    for key in draw(st.lists(st.sampled_from(OUR_HEADER_KEYS), max_size=4, unique=True)):
        headers[key] = draw(amqp_values(3))
    if draw(st.integers(0, 9)) == 0:
        # Deeper than Python's recursion limit lets py-amqp read (about 1000 levels), or well within
        # it: nothing near the limit, where the depth a reader's own stack adds decides the outcome.
        headers[draw(header_keys())] = deep_table(draw(st.sampled_from([40, 400, 1_500, 5_000])))
    if draw(st.integers(0, 9)) == 0:
        # A key that is not UTF-8: written as bytes, a reader gets it back as bytes.
        headers[draw(st.binary(min_size=1, max_size=20))] = draw(amqp_scalars())
    return headers


def serialized_properties(headers: dict[str, Any], properties: dict[str, Any] | None = None) -> bytes:
    """The content header frame's properties as py-amqp sends them."""
    properties = dict(properties or {})
    if "expiration" in properties:  # kombu's seconds, as kombu sends them
        properties["expiration"] = str(int(properties["expiration"] * 1000))
    message = AmqpMessage(b"", application_headers=headers, **properties)
    with deep_recursion():
        return message._serialize_properties()


def header_frame_size(headers: dict[str, Any], properties: dict[str, Any] | None = None) -> int:
    """Bytes of the content header frame py-amqp will send (headers plus the other properties)."""
    return len(serialized_properties(headers, properties)) + 12


def fits_in_a_frame(headers: dict[str, Any], properties: dict[str, Any] | None = None) -> bool:
    return header_frame_size(headers, properties) <= MAX_HEADER_FRAME


# --- properties ----------------------------------------------------------------------------


def shortstrs() -> st.SearchStrategy[str | bytes]:
    """Short strings, sometimes not UTF-8 (bytes: sent as they are, as any non-Python client can)."""
    return st.one_of(
        st.text(max_size=40),
        st.uuids().map(str),
        st.just("x" * SHORTSTR),
        st.binary(min_size=1, max_size=10).filter(lambda b: not _is_utf8(b)),
    ).filter(lambda s: len(s if isinstance(s, bytes) else s.encode("utf-8", errors="surrogatepass")) <= SHORTSTR)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def properties(*, live: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Every basic property but headers and content type/encoding. ``live``: nothing that makes
    the broker drop or expire the message (the live oracle would race the clock)."""
    # Seconds, as kombu takes it (it sends str(int(seconds * 1000))).
    expiration = st.sampled_from([86400, 3600.5]) if live else st.sampled_from([0, 0.001, 1, 86400])
    return st.fixed_dictionaries(
        {},
        optional={
            "message_id": shortstrs(),
            "correlation_id": shortstrs(),
            "type": st.one_of(st.sampled_from(EVENT_TYPES), shortstrs()),
            "app_id": shortstrs(),
            "timestamp": st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**63, 2**64 - 1])),
            "priority": st.integers(0, 255),
            "expiration": expiration,
            "reply_to": shortstrs(),
            "user_id": st.just("guest"),
            "delivery_mode": st.sampled_from([1, 2]),
        },
    )


def content_types() -> st.SearchStrategy[str | None]:
    return st.one_of(st.sampled_from(CONTENT_TYPES), shortstrs(), st.none())


def content_encodings() -> st.SearchStrategy[str | None]:
    return st.one_of(st.sampled_from(CONTENT_ENCODINGS), shortstrs(), st.none())


# --- messages ------------------------------------------------------------------------------


@st.composite
def messages(draw, *, max_body: int = 65_536, live: bool = False) -> HostileMessage:
    """Any message: a raw body, a wrong event envelope, or a wrong Celery task message."""
    kind = draw(st.sampled_from(["raw", "raw", "envelope", "task"]))
    headers = draw(hostile_headers())
    if kind == "task":
        headers = {**headers, **draw(task_headers())}
        body = json.dumps(draw(task_bodies()), allow_nan=True).encode("utf-8", errors="surrogatepass")
        body = draw(st.one_of(st.just(body), bodies(max_body)))
    elif kind == "envelope":
        body = draw(
            st.one_of(
                envelopes().map(lambda e: json.dumps(e, allow_nan=True).encode("utf-8", "surrogatepass")),
                deep_json_text(),
            )
        )
    else:
        body = draw(bodies(max_body))
    props = draw(properties(live=live))
    message = HostileMessage(
        body=body,
        content_type=draw(content_types()),
        content_encoding=draw(content_encodings()),
        headers=headers,
        properties=props,
    )
    if not fits_in_a_frame(message.headers, props):
        # Too big for one header frame: keep what fits, so the publish itself succeeds.
        message = replace(
            message, headers={k: v for k, v in headers.items() if k in OUR_HEADER_KEYS and fits_in_a_frame({k: v})}
        )
        if not fits_in_a_frame(message.headers, props):
            message = replace(message, headers={})
    return message


# --- what a reader receives --------------------------------------------------------------------


def received_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` as a reader gets them (see ``received``)."""
    return received(HostileMessage(body=b"", headers=headers)).headers


def received_properties(message: HostileMessage) -> dict[str, Any]:
    """The message's properties as a reader of ours decodes them: with the basic-properties decoder
    installed in py-amqp in this process (marketplace/celery.py installs the runtime's)."""
    props = {
        **message.properties,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
    }
    buf = serialized_properties(message.headers, {k: v for k, v in props.items() if v is not None})
    with reader_recursion_limit():
        decoded, _ = serialization.PROPERTY_CLASSES[Basic.CLASS_ID](buf, 0)
    return decoded


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


@contextmanager
def reader_recursion_limit(headroom: int = 1000):
    """Decode as a worker or the recorder does: with Python's default recursion limit (1000) above
    a shallow stack. Hypothesis raises the limit while it runs a test, so without this a header
    table 1500 levels deep decodes here and not in any reader."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + headroom)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def received_body(body: bytes, content_encoding: Any) -> bytes | str:
    """The body as py-amqp hands it over: decoded by content_encoding when that codec takes it."""
    if content_encoding:
        try:
            return body.decode(content_encoding)
        except Exception:
            return body
    return body


@dataclass
class FakeMessage:
    """What dead_letters reads of a kombu Message, for the in-process tests."""

    body: bytes | str
    content_type: Any
    content_encoding: Any
    headers: Any
    properties: dict[str, Any]
    delivery_info: dict[str, Any] = field(default_factory=dict)


def received(message: HostileMessage, *, routing_key: str = "") -> FakeMessage:
    properties = received_properties(message)
    return FakeMessage(
        body=received_body(message.body, properties.get("content_encoding")),
        content_type=properties.get("content_type"),
        content_encoding=properties.get("content_encoding"),
        headers=properties.get("application_headers") or {},
        properties=properties,
        delivery_info={"routing_key": routing_key},
    )


# --- an oracle independent of the code under test ------------------------------------------------


def expected_event_type(body: bytes, headers: dict[str, Any]) -> str | None:
    """The event type a subscriber's consumer sees in a message it adopts (None if it adopts
    nothing: not a JSON object with a str ``type`` and an ``id``), or "task" for a message with
    a ``task`` header (the consumer hands those to Celery as task messages)."""
    if "task" in headers:
        return "task"
    try:
        decoded = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if isinstance(decoded, dict) and isinstance(decoded.get("type"), str) and "id" in decoded:
        return decoded["type"]
    return None


def is_codec(name: str | None) -> bool:
    if not name:
        return False
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def expected_record_key(body: bytes, headers: dict) -> tuple[str, str]:
    """Which FailedEvent a dead letter belongs to, from the contract (docs/operations.md, dead_letters.py):
    its event id (the envelope's, or a task message's first argument's), else the digest of its body."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        decoded = None
    if "task" in headers and isinstance(decoded, list) and decoded and isinstance(decoded[0], list):
        decoded = decoded[0][0] if decoded[0] else None
    if isinstance(decoded, dict) and "id" in decoded:
        try:
            return ("event", str(uuid.UUID(str(decoded["id"]))))
        except ValueError:
            pass
    return ("body", hashlib.sha256(body).hexdigest())
