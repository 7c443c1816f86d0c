import time
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from kombu import Connection

from marketplace.events import topology
from marketplace.events.broker import connect_once
from marketplace.events.topology_check import ManagementApi, topology_problems
from marketplace.events.topology_migration import MigrationError, migrate_topology

VHOST_API_WAIT_SECONDS = 30


class Command(BaseCommand):
    help = (
        "Declare the events exchange, every subscriber queue, retry queue, dead-letter queue, the "
        "dead-letter recorder's queue and their bindings (idempotent; re-creates a missing queue or "
        "binding). --check only reports what differs from marketplace/events/topology.py. --migrate "
        "moves the classic queues of the previous release to the quorum declarations without losing "
        "a message: STOP EVERY WORKER FIRST (upgrading from the classic-queue release: stop the "
        "workers, run setup_broker --migrate, start the new workers)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--check",
            action="store_true",
            help="Report missing exchanges, queues, bindings and queues with other arguments; change "
            "nothing; exit non-zero if anything differs.",
        )
        mode.add_argument(
            "--migrate",
            action="store_true",
            help="Re-create every queue whose arguments differ (the previous release's classic "
            "queues) as topology.py declares it, keeping its messages. Workers must be stopped.",
        )

        parser.add_argument(
            "--create-vhost",
            action="store_true",
            help="First create the vhost BROKER_URL names, if missing, and give its user every permission "
            "on it (through RABBITMQ_MANAGEMENT_URL): each deployment its own vhost.",
        )

    def handle(self, *args: Any, check: bool, migrate: bool, create_vhost: bool, **options: Any) -> None:
        retry_delays = settings.SUBSCRIBER_RETRY_DELAYS
        if create_vhost:
            self._create_vhost()
        with Connection(settings.BROKER_URL) as connection:
            if check:
                self._check(connection, retry_delays)
                return
            if migrate:
                self._migrate(connection, retry_delays)
            else:
                try:
                    topology.declare(connection, retry_delays)
                except topology.TopologyMismatch as exc:
                    raise CommandError(
                        f"{exc} Upgrading from the classic-queue release? Stop the workers and run "
                        "setup_broker --migrate."
                    ) from exc
        self.stdout.write(f"exchange {topology.EVENTS_EXCHANGE.name} (fanout)")
        for subscriber in topology.SUBSCRIBERS:
            delays = ", ".join(f"{d}s" for d in (retry_delays or {}).get(subscriber.name, ())) or "none"
            self.stdout.write(
                f"  {subscriber.queue_name} -> dead letters to {subscriber.dead_letter_queue_name}"
                f"  (task {subscriber.task}; retry queues: {delays})"
            )
        self.stdout.write(f"dead letters also go to {topology.RECORDER_QUEUE_NAME}")
        self.stdout.write(self.style.SUCCESS("broker topology declared"))

    def _create_vhost(self) -> None:
        broker = Connection(settings.BROKER_URL, connect_timeout=5)
        try:
            connect_once(broker)
            broker.release()
            return  # it exists, and its user may use it
        except broker.connection_errors:
            broker.release()
        api = ManagementApi(settings.RABBITMQ_MANAGEMENT_URL)
        deadline = time.monotonic() + VHOST_API_WAIT_SECONDS
        while True:  # a management plugin enabled a moment ago may not listen yet
            try:
                api.create_vhost(broker.virtual_host, user=broker.userid)  # type: ignore[arg-type]  # BROKER_URL names its user
                break
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise CommandError(f"could not create vhost {broker.virtual_host!r}: {exc}") from exc
                time.sleep(1)
            except httpx.HTTPError as exc:
                raise CommandError(f"could not create vhost {broker.virtual_host!r}: {exc}") from exc
        self.stdout.write(f"created vhost {broker.virtual_host!r} for user {broker.userid!r}")

    def _check(self, connection: Connection, retry_delays: dict[str, tuple[int, ...]]) -> None:
        problems = topology_problems(connection, settings.RABBITMQ_MANAGEMENT_URL, retry_delays=retry_delays)
        for problem in problems:
            self.stdout.write(f"- {problem}")
        if problems:
            raise CommandError(
                f"{len(problems)} topology problem(s). `manage.py setup_broker` re-creates missing queues "
                "and bindings; queues with other arguments need `setup_broker --migrate` (workers stopped)."
            )
        self.stdout.write(self.style.SUCCESS("broker topology is as marketplace/events/topology.py declares"))

    def _migrate(self, connection: Connection, retry_delays: dict[str, tuple[int, ...]]) -> None:
        self.stdout.write(
            self.style.WARNING(
                "Migrating: every worker must be stopped (a queue with consumers is refused), and so must "
                "every process of the previous release (it would declare the classic queues again); "
                "the new release's API and relay may keep publishing."
            )
        )
        try:
            migrated = migrate_topology(
                connection, settings.RABBITMQ_MANAGEMENT_URL, retry_delays=retry_delays, report=self.stdout.write
            )
        except (MigrationError, topology.TopologyMismatch) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"migrated {migrated} queue(s); start the new workers now")
