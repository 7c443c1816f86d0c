from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.events import topology
from marketplace.events.backfill import BackfillError, backfill_events
from marketplace.events.management.arguments import moment


class Command(BaseCommand):
    help = (
        "Republish retained outbox events to ONE subscriber's queue (not the fanout: no other subscriber "
        "sees them), oldest first, with publisher confirms; each message carries the header "
        "marketplace-backfill: true. For the gap a subscriber missed while its queue or binding was gone. "
        "Safe to repeat: subscribers dedupe by event id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subscriber", required=True, choices=[s.name for s in topology.SUBSCRIBERS])
        parser.add_argument(
            "--since", required=True, type=moment, help="Events created at or after this date / ISO date-time."
        )
        parser.add_argument(
            "--until", type=moment, help="Events created before this date / ISO date-time (default: now)."
        )
        parser.add_argument(
            "--type", action="append", dest="event_types", metavar="EVENT_TYPE", help="Only this type (repeatable)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be republished; publish nothing.")
        parser.add_argument("--batch-size", type=int, default=500, help="Outbox rows read per query (default 500).")

    def handle(
        self,
        *args: Any,
        subscriber: str,
        since: datetime,
        until: datetime | None,
        event_types: list[str] | None,
        dry_run: bool,
        batch_size: int,
        **options: Any,
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if until is not None and until <= since:
            raise CommandError("--until must be later than --since")
        target = topology.subscriber_named(subscriber)
        try:
            result = backfill_events(
                subscriber=target,
                since=since,
                until=until,
                event_types=event_types,
                dry_run=dry_run,
                batch_size=batch_size,
                progress=self._progress,
            )
        except BackfillError as exc:
            raise CommandError(str(exc)) from exc
        span = f" (outbox ids {result.first_id}..{result.last_id})" if result.matched else ""
        if dry_run:
            self.stdout.write(f"would republish {result.matched} event(s) to {result.queue}{span}")
            return
        self.stdout.write(
            self.style.SUCCESS(f"republished {result.published} of {result.matched} event(s) to {result.queue}{span}")
        )

    def _progress(self, done: int, total: int) -> None:
        self.stdout.write(f"{done}/{total} ({100 * done // total}%)")
