from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from marketplace import tracing
from marketplace.events import topology
from marketplace.events.management.arguments import moment
from marketplace.events.models import FailedEvent
from marketplace.events.services import NotReplayable, failed_event_replay


class Command(BaseCommand):
    help = "Replay failed events to their subscriber's own queue (the subscriber dedupes by event id)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subscriber", choices=[s.name for s in topology.SUBSCRIBERS])
        parser.add_argument("--id", type=int, action="append", dest="ids", help="FailedEvent id (repeatable).")
        parser.add_argument(
            "--since", type=moment, help="Only events that last failed at or after this date / date-time."
        )
        parser.add_argument("--dry-run", action="store_true", help="List what would be replayed; change nothing.")

    def handle(
        self,
        *args: Any,
        subscriber: str | None,
        ids: list[int] | None,
        since: datetime | None,
        dry_run: bool,
        **options: Any,
    ) -> None:
        tracing.configure("replay")  # each replay a new trace, linked to the one its event failed in
        failed_events = FailedEvent.objects.open().order_by("id")
        if subscriber:
            failed_events = failed_events.filter(subscriber=subscriber)
        if ids:
            failed_events = failed_events.filter(id__in=ids)
        if since:
            failed_events = failed_events.filter(last_failed_at__gte=since)

        replayed = 0
        for failed_event in failed_events:
            line = f"#{failed_event.pk} {failed_event.subscriber} {failed_event.event_type} {failed_event.event_id}"
            if dry_run:
                self.stdout.write(f"would replay {line}")
                continue
            try:
                failed_event_replay(failed_event=failed_event, via="command")
            except NotReplayable as exc:
                self.stderr.write(f"skipped {line}: {exc}")
                continue
            replayed += 1
            self.stdout.write(f"replayed {line}")
        tracing.flush()
        verb = "would replay" if dry_run else "replayed"
        count = failed_events.count() if dry_run else replayed
        self.stdout.write(self.style.SUCCESS(f"{verb} {count} failed event(s)"))
