import functools
import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import kombu.exceptions
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections
from kombu import Connection, Consumer
from kombu.message import Message

from marketplace import tracing
from marketplace.celery import app
from marketplace.events import dead_letters, topology
from marketplace.events import headers as message_headers
from marketplace.events import tracing as event_tracing
from marketplace.events.outages import is_database_outage
from marketplace.internals import amqp as amqp_internals

logger = logging.getLogger("marketplace.recorder")

# With --once: the inbox counts as drained after this long without a delivery.
ONCE_IDLE_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


class Command(BaseCommand):
    help = (
        "Record every dead letter as a FailedEvent (acknowledged only once the row committed) and remove "
        "resolved or archived failures from the dead-letter queues. Runs until stopped; several copies may run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Record what is waiting, compact once, then exit.")

    def handle(self, *args: Any, once: bool, **options: Any) -> None:
        self._stopping = False
        self._recorded = 0
        self._received: list[Message] = []
        self._alerts = dead_letters.Alerts()
        tracing.configure("recorder")
        if not once:
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)
        backoff = 1.0
        while not self._stopping:
            try:
                self._run(once=once)
                break
            except self._broker_errors as exc:  # only the connection: every message is settled on its own
                if once:
                    raise
                logger.warning(
                    "recorder lost the broker (%s: %s); reconnecting in %.0fs", type(exc).__name__, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        self._alerts.send(all_waiting=True)
        tracing.flush()
        self.stdout.write(f"recorded {self._recorded} dead letter(s)")

    @property
    def _broker_errors(self) -> tuple[type[BaseException], ...]:
        probe = Connection(settings.BROKER_URL)
        # ensure_connection gives up with kombu's OperationalError while the broker stays down.
        return (*probe.connection_errors, *probe.channel_errors, socket.error, kombu.exceptions.OperationalError)

    def _run(self, *, once: bool) -> None:
        with Connection(
            settings.BROKER_URL,
            transport_options={"confirm_publish": True},
            heartbeat=app.conf.broker_heartbeat or 0,
        ) as connection:
            connection.ensure_connection(max_retries=3)
            channel = amqp_internals.raw_bodies(connection.channel())
            channel.basic_qos(0, settings.DEAD_LETTER_RECORDER_PREFETCH, False)
            inbox = topology.recorder_queue()(channel)
            inbox.declare()
            topology.parked_queue()(channel).declare()
            self._connection = connection
            self._received.clear()  # deliveries of a lost connection come again on this one
            next_compaction = 0.0
            with Consumer(
                channel,
                queues=[inbox],
                on_message=self._received.append,
                # A body kombu fails to decompress (a "compression" header) is a dead letter like any other.
                on_decode_error=lambda message, exc: self._received.append(message),
                auto_declare=False,
            ):
                while not self._stopping:
                    try:
                        connection.drain_events(timeout=ONCE_IDLE_SECONDS if once else 1.0)
                        self._take_burst(connection)
                    except TimeoutError:
                        connection.heartbeat_check()
                    # Deliveries also arrive while compacting, parking or waiting out the database
                    # (whatever reads the connection dispatches them): none may wait for the next one.
                    if self._received:
                        burst = list(self._received)
                        self._received.clear()
                        with event_tracing.recording(burst):
                            self._record(burst)
                        self._alerts.send()
                        continue
                    if time.monotonic() >= next_compaction:
                        self._compact(connection)
                        next_compaction = time.monotonic() + settings.DEAD_LETTER_COMPACT_SECONDS
                    self._alerts.send()
                    if once and not self._received:
                        break

    def _take_burst(self, connection: Connection) -> None:
        """Whatever else the broker has already delivered, up to the prefetch: one transaction."""
        while len(self._received) < settings.DEAD_LETTER_RECORDER_PREFETCH:
            try:
                connection.drain_events(timeout=0)
            except TimeoutError:
                return

    def _record(self, messages: list[Message]) -> None:
        """Commit the records, then acknowledge. While our database is down, hold the messages and
        wait; a message that cannot be recorded at all is parked. Nothing else leaves here."""
        failures = []
        for message in messages:
            subscriber = topology.subscriber_for_dead_letter_queue(message.delivery_info.get("routing_key", ""))
            if subscriber is None:
                self._park(message, "it names no subscriber's dead-letter queue as its routing key")
                continue
            failures.append(
                (
                    message,
                    dead_letters.read(
                        subscriber=subscriber,
                        body=dead_letters.body_bytes(message),
                        headers=message.headers,
                        content_type=message.content_type,
                    ),
                )
            )
        if not failures:
            return
        created = self._until_written(lambda: dead_letters.write_failures([f for _, f in failures], self._alerts))
        if created is None and not self._stopping:
            # One of them was refused (not an outage): each on its own, with its fallbacks.
            created = [self._until_written(functools.partial(self._record_one, *pair)) for pair in failures]
        if self._stopping and (created is None or None in created):
            return  # unacknowledged: the broker gives them to the next recorder, which sees what committed
        for message, _ in failures:
            if not message.acknowledged:
                message.ack()
        self._recorded += sum(created)

    def _record_one(self, message: Message, failure: dead_letters.Failure) -> bool:
        try:
            return dead_letters.record_failure(failure, self._alerts)
        except dead_letters.Unrecordable as exc:
            self._park(message, f"the database refused its record: {exc}")
        except Exception as exc:  # a bug of ours must not hold the message, nor lose it
            if is_database_outage(exc):
                raise
            logger.exception("could not record a dead letter of %s", failure.subscriber.name)
            self._park(message, f"recording it failed: {message_headers.exception_name(exc)}: {exc}")
        return False

    def _until_written(self, write: Callable[[], Any]) -> Any:
        """``write()``, waited out through database outages; None if it raised anything else, or
        if the recorder is stopping before the database came back."""
        backoff = 1.0
        while True:
            try:
                return write()
            except Exception as exc:
                if not is_database_outage(exc):
                    logger.exception("the database refused a batch of dead-letter records; recording them one by one")
                    return None
                if self._stopping:
                    return None
                logger.warning("cannot record dead letters yet (%s); retrying in %.0fs", exc, backoff)
                close_old_connections()
                self._wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _wait(self, seconds: float) -> None:
        """Sleep without missing the broker's heartbeats (py-amqp sends them only when asked)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._connection.heartbeat_check()
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))

    def _park(self, message: Message, reason: str) -> None:
        dead_letters.park(self._connection, message, reason=reason)
        message.ack()

    def _compact(self, connection: Connection) -> None:
        for subscriber in topology.SUBSCRIBERS:
            try:
                dead_letters.compact(connection, subscriber)
            except connection.connection_errors:
                raise
            except Exception as exc:
                if is_database_outage(exc):
                    logger.warning("could not compact %s (%s); will try again", subscriber.dead_letter_queue_name, exc)
                    close_old_connections()
                else:  # its own channel's error (a queue missing until the relay heals it), or a bug
                    logger.exception("could not compact %s; will try again", subscriber.dead_letter_queue_name)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        logger.info("recorder stopping")
        self._stopping = True
