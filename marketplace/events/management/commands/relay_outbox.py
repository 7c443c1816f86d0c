import logging
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from marketplace.events.publisher import BrokerPublisher, outbox_lag_seconds, relay_once

logger = logging.getLogger("marketplace.relay")


class Command(BaseCommand):
    help = (
        "Publish pending outbox rows to the broker, oldest first. Runs until stopped (SIGTERM/SIGINT); "
        "several copies may run side by side."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Publish everything publishable now, then exit.")
        parser.add_argument("--batch-size", type=int, default=settings.OUTBOX_BATCH_SIZE)

    def handle(self, *args, once: bool, batch_size: int, **options):
        self._stopping = False
        if not once:
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)
        publisher = BrokerPublisher()
        published = failed = 0
        try:
            while not self._stopping:
                results = relay_once(publisher, batch_size)
                published += sum(r.ok for r in results)
                failed += sum(not r.ok for r in results)
                if once and (not results or not any(r.ok for r in results)):
                    break
                if not results or not all(r.ok for r in results):
                    time.sleep(settings.OUTBOX_POLL_SECONDS)
        finally:
            publisher.close()
        self.stdout.write(f"published {published}, failed {failed}, outbox lag {outbox_lag_seconds():.1f}s")
        if once and failed:
            raise SystemExit(1)

    def _stop(self, signum, frame):
        logger.info("relay stopping after the current batch")
        self._stopping = True
