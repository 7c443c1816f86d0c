import contextlib
import logging
import signal
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, close_old_connections

from marketplace import tracing
from marketplace.events.broker import BrokerPublisher
from marketplace.events.outbox import outbox_lag_seconds, relay_once
from marketplace.events.topology_check import TopologyWatch

logger = logging.getLogger("marketplace.relay")


class Command(BaseCommand):
    help = (
        "Publish pending outbox rows to the broker, oldest first. Runs until stopped (SIGTERM/SIGINT); "
        "several copies may run side by side. Every TOPOLOGY_CHECK_SECONDS (and once at start) it checks "
        "the broker topology; a missing queue or binding is alerted (ERROR log + mail_admins, once per "
        "distinct problem set) and healed by re-declaring the topology."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Publish everything publishable now, then exit.")
        parser.add_argument("--batch-size", type=int, default=settings.OUTBOX_BATCH_SIZE)

    def handle(self, *args: Any, once: bool, batch_size: int, **options: Any) -> None:
        self._stopping = False
        tracing.configure("relay")
        if not once:
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)
        publisher = BrokerPublisher()
        topology_watch = TopologyWatch(
            broker_url=settings.BROKER_URL,
            management_url=settings.RABBITMQ_MANAGEMENT_URL,
            interval=settings.TOPOLOGY_CHECK_SECONDS,
            retry_delays=settings.SUBSCRIBER_RETRY_DELAYS,
        )
        published = failed = 0
        if not once:
            logger.info(
                "relay started: publishing outbox rows the on-commit path could not, every %ss, to %s",
                settings.OUTBOX_POLL_SECONDS,
                publisher.broker_address(),
            )
        try:
            while not self._stopping:
                topology_watch.check_if_due()
                try:
                    results = relay_once(publisher, batch_size)
                except DatabaseError as exc:
                    # The outbox is in the database: nothing to publish until it is back, nothing lost.
                    if once:
                        raise
                    logger.warning("relay cannot reach the database (%s); retrying", exc)
                    close_old_connections()
                    time.sleep(settings.OUTBOX_POLL_SECONDS)
                    continue
                published += sum(r.ok for r in results)
                failed += sum(not r.ok for r in results)
                if once and (not results or not any(r.ok for r in results)):
                    break
                if not results or not all(r.ok for r in results):
                    time.sleep(settings.OUTBOX_POLL_SECONDS)
        finally:
            publisher.close()
            tracing.flush()
        self.stdout.write(f"published {published}, failed {failed}")
        with contextlib.suppress(DatabaseError):
            self.stdout.write(f"outbox lag {outbox_lag_seconds():.1f}s")
        if once and failed:
            raise SystemExit(1)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        logger.info("relay stopping after the current batch")
        self._stopping = True
