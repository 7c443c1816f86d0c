from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from kombu import Connection

from marketplace.events import topology


class Command(BaseCommand):
    help = "Declare the events exchange, every subscriber queue, dead-letter queue and binding (idempotent)."

    def handle(self, *args, **options):
        with Connection(settings.BROKER_URL) as connection:
            try:
                topology.declare(connection)
            except topology.TopologyMismatch as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(f"exchange {topology.EVENTS_EXCHANGE.name} (fanout)")
        for subscriber in topology.SUBSCRIBERS:
            self.stdout.write(
                f"  {subscriber.queue_name} -> dead letters to {subscriber.dead_letter_queue_name}"
                f"  (task {subscriber.task})"
            )
        self.stdout.write(self.style.SUCCESS("broker topology declared"))
