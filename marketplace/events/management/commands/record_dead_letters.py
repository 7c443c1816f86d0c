import logging
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections
from kombu import Connection

from marketplace.events import dead_letters, topology

logger = logging.getLogger("marketplace.recorder")

IDLE_POLL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


class Command(BaseCommand):
    help = (
        "Record every dead letter as a FailedEvent (acknowledged only once the row committed) and remove "
        "resolved or archived failures from the dead-letter queues. Runs until stopped; several copies may run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Record what is waiting, compact once, then exit.")

    def handle(self, *args, once: bool, **options):
        self._stopping = False
        if not once:
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)
        recorded = 0
        backoff = 1.0
        while not self._stopping:
            try:
                recorded += self._run(once=once)
                break
            except Exception as exc:  # the broker went away: reconnect with backoff, lose nothing
                if once:
                    raise
                logger.warning(
                    "recorder lost the broker (%s: %s); reconnecting in %.0fs", type(exc).__name__, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        self.stdout.write(f"recorded {recorded} dead letter(s)")

    def _run(self, *, once: bool) -> int:
        recorded = 0
        next_compaction = 0.0
        with Connection(settings.BROKER_URL, transport_options={"confirm_publish": True}) as connection:
            connection.ensure_connection(max_retries=3)
            inbox = topology.recorder_queue()(connection.default_channel)
            inbox.declare()
            while not self._stopping:
                message = inbox.get(no_ack=False)
                if message is not None:
                    recorded += self._record(message)
                    continue
                if time.monotonic() >= next_compaction:
                    self._compact(connection)
                    next_compaction = time.monotonic() + settings.DEAD_LETTER_COMPACT_SECONDS
                if once:
                    break
                time.sleep(IDLE_POLL_SECONDS)
        return recorded

    def _record(self, message) -> int:
        """Commit the row, then acknowledge; while the database is down, hold the message and wait."""
        subscriber = topology.subscriber_for_dead_letter_queue(message.delivery_info.get("routing_key", ""))
        if subscriber is None:
            # Its copy stays in the dead-letter queue it was routed to; only the record is skipped.
            logger.error("dead letter for no known subscriber (%r)", message.delivery_info.get("routing_key"))
            message.ack()
            return 0
        backoff = 1.0
        while True:
            try:
                created = dead_letters.record(
                    subscriber=subscriber,
                    body=dead_letters.body_bytes(message),
                    headers=message.headers or {},
                    content_type=message.content_type or "",
                )
                break
            except DatabaseError as exc:
                if self._stopping:
                    return 0  # unacknowledged: the broker gives it to the next recorder
                logger.warning(
                    "cannot record a dead letter of %s yet (%s); retrying in %.0fs", subscriber.name, exc, backoff
                )
                close_old_connections()
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        message.ack()
        return int(created)

    def _compact(self, connection) -> None:
        for subscriber in topology.SUBSCRIBERS:
            try:
                dead_letters.compact(connection, subscriber)
            except DatabaseError as exc:
                logger.warning("could not compact %s (%s); will try again", subscriber.dead_letter_queue_name, exc)
                close_old_connections()

    def _stop(self, signum, frame):
        logger.info("recorder stopping")
        self._stopping = True
