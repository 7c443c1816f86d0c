"""The broker client every publisher shares: one connection with a confirming channel.

Used by the on-commit publisher and the relay (marketplace/events/outbox.py), backfills and the
topology check. A message counts as published only once the broker confirmed it and did not
return it as unroutable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from django.conf import settings
from kombu import Connection, Exchange, Producer

from marketplace import tracing
from marketplace.events import topology
from marketplace.events import tracing as event_tracing
from marketplace.events.envelope import CONTENT_TYPE

logger = logging.getLogger(__name__)


# Stands for a returned message whose id could not be read.
RETURNED_UNREADABLE = object()


class Unroutable(RuntimeError):
    """The broker returned the message: no queue is bound to the exchange."""


def connect_once(connection: Connection) -> Connection:
    """Connect with one attempt per broker host and no sleep; raise if every host failed.

    BROKER_URL may list several hosts separated by ";" (a cluster): kombu then moves to the next
    host after each failed attempt and sleeps only once a whole round has failed, so
    ``max_retries = hosts - 1`` is exactly one round. (``max_retries=0`` would try the first host
    only, and Connection.connect() retries after sleeping 2 seconds, which would hold every order
    that long while the broker is down.) Each attempt is bounded by the connection's connect_timeout.
    """
    return connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1)


# Envelope fields copied into AMQP properties and headers (name: envelope field), so that a consumer
# can route or filter without parsing the body. The AsyncAPI document (events/asyncapi.py) is
# generated from these: a header added here is documented with its envelope field's schema.
ENVELOPE_PROPERTIES = {"message_id": "id", "correlation_id": "correlation_id", "type": "type", "app_id": "source"}
ENVELOPE_HEADERS = {"event_type": "type", "event_version": "version"}


def event_message(
    envelope: dict[str, Any], *, trace_headers: dict[str, str] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Body and AMQP properties (headers included) of an event, as every publisher sends it:
    the on-commit publish, the relay and a backfill.

    ``trace_headers`` (``traceparent``, ``tracestate``) name the span that publishes it; without
    them the message carries the trace context the event records, so a consumer still continues
    the trace of the operation that created it."""
    body = json.dumps(envelope, separators=(",", ":")).encode()
    properties = {
        "delivery_mode": 2,
        "content_type": CONTENT_TYPE,
        "content_encoding": "utf-8",
        **{name: envelope.get(field) for name, field in ENVELOPE_PROPERTIES.items()},
        "timestamp": int(time.time()),
        # An optional envelope field the event lacks is left out, not sent as a null header.
        "headers": {
            **{name: envelope[field] for name, field in ENVELOPE_HEADERS.items() if field in envelope},
            # W3C trace context: the publishing span's, else the one the event records (if any).
            **(tracing.w3c_fields(envelope) if trace_headers is None else trace_headers),
        },
    }
    return body, properties


class BrokerPublisher:
    """One broker connection with a confirming channel; not thread-safe (one per thread)."""

    def __init__(self, url: str | None = None, timeout: float | None = None):
        self.url = url or settings.BROKER_URL
        self.timeout = settings.EVENTS_PUBLISH_TIMEOUT if timeout is None else timeout
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._returned: set[object] = set()  # message ids, and RETURNED_UNREADABLE
        self._blocked = False

    def broker_address(self) -> str:
        """The broker URL(s) without the password, for logs."""
        return Connection(self.url).as_uri(include_password=False)

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            connection = Connection(
                self.url,
                connect_timeout=self.timeout,
                # Every socket read and write is bounded too, so no declare or confirm waits forever.
                transport_options={
                    "confirm_publish": True,
                    "read_timeout": self.timeout,
                    "write_timeout": self.timeout,
                },
                heartbeat=0,
            )
            connect_once(connection)
            try:
                topology.declare(connection, settings.SUBSCRIBER_RETRY_DELAYS)
            except Exception:
                connection.release()
                raise
            # RabbitMQ announces a memory or disk alarm with connection.blocked (and the end of it
            # with connection.unblocked); both arrive while this connection reads frames.
            connection.connection.on_blocked = self._on_blocked
            connection.connection.on_unblocked = self._on_unblocked
            self._connection = connection
            self._producer = Producer(
                connection.default_channel,
                exchange=topology.EVENTS_EXCHANGE,
                on_return=self._on_return,
            )
        return self._producer

    def _on_blocked(self, reason: str) -> None:
        logger.warning("RabbitMQ blocks publishing (%s); events wait in the outbox until it unblocks", reason)
        self._blocked = True

    def _on_unblocked(self) -> None:
        logger.warning("RabbitMQ unblocked publishing")
        self._blocked = False

    def is_blocked(self) -> bool:
        """Whether RabbitMQ said it blocks this connection's publishes (frames read so far)."""
        if self._blocked and self._connection is not None:
            # Nothing to read raises socket.timeout; a broken connection fails the next publish anyway.
            with contextlib.suppress(Exception):
                self._connection.drain_events(timeout=0)
        return self._blocked

    def _on_return(self, exception: Exception, exchange: Exchange | str, routing_key: str, message: Any) -> None:
        try:
            self._returned.add(str(message.properties["message_id"]))
        except Exception:  # a return we cannot attribute: every publish waiting on it counts as returned
            logger.exception("RabbitMQ returned a message without a readable message_id")
            self._returned.add(RETURNED_UNREADABLE)

    def publish(self, envelope: dict[str, Any]) -> None:
        """Publish one envelope and wait for the broker's confirm; raise on any failure.

        A cached connection may have gone stale (the broker restarted since the last publish), so
        a failure on a reused connection gets one more try on a fresh one.
        """
        with event_tracing.publishing(envelope, exchange=topology.EVENTS_EXCHANGE.name) as trace_headers:
            reused = self._producer is not None
            try:
                self._publish_once(envelope, trace_headers)
            except Unroutable:
                raise
            except Exception:
                if not reused:
                    raise
                logger.info("broker connection went stale; publishing event %s on a new one", envelope["id"])
                self._publish_once(envelope, trace_headers)

    def _publish_once(self, envelope: dict[str, Any], trace_headers: dict[str, str]) -> None:
        producer = self._ensure_producer()
        event_id = envelope["id"]
        self._returned.discard(event_id)
        try:
            body, properties = event_message(envelope, trace_headers=trace_headers)
            producer.publish(
                body,
                routing_key="",
                mandatory=True,
                serializer=None,
                timeout=self.timeout,
                confirm_timeout=self.timeout,
                **properties,
            )
        except Exception:
            self.close()
            raise
        if event_id in self._returned or RETURNED_UNREADABLE in self._returned:
            self._returned.discard(RETURNED_UNREADABLE)
            raise Unroutable(f"event {event_id} was returned by the broker: no queue is bound")

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # the connection is already broken; nothing left to release
                logger.debug("error while closing a broken broker connection", exc_info=True)
        self._connection = self._producer = None
        self._blocked = False
