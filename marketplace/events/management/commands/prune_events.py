import time
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.events.retention import RetentionMisconfigured, TableResult, prune_events

PROGRESS_SECONDS = 1.0


class Command(BaseCommand):
    help = (
        "Delete published outbox rows, dedupe markers (ProcessedEvent) and resolved or archived failed events "
        "past their retention (OUTBOX_RETENTION_DAYS, PROCESSED_EVENT_RETENTION_DAYS, FAILED_EVENT_RETENTION_DAYS), "
        "in short batches; first removes closed failures' messages from the dead-letter queues. Never deletes a "
        "pending outbox row or an open failure. Safe to run while the system runs, and to repeat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; change nothing.")
        parser.add_argument(
            "--batch-size", type=int, help="Rows deleted per transaction (default RETENTION_BATCH_SIZE, 1000)."
        )

    def handle(self, *args: Any, dry_run: bool, batch_size: int | None, verbosity: int, **options: Any) -> None:
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        self._every_batch = verbosity >= 2
        self._last_progress = 0.0
        try:
            result = prune_events(batch_size=batch_size, dry_run=dry_run, progress=self._progress)
        except RetentionMisconfigured as exc:
            raise CommandError(str(exc)) from exc
        if dry_run:
            self.stdout.write("dead-letter queues: not compacted (dry run)")
        elif result.compacted is None:
            self.stdout.write(
                self.style.WARNING("dead-letter queues: broker unreachable, not compacted; queued failures are kept")
            )
        else:
            self.stdout.write(f"dead-letter queues: removed {result.compacted} message(s) of closed failures")
        for table in result.tables:
            self.stdout.write(self._summary(table, dry_run=dry_run))

    def _progress(self, table: str, deleted: int) -> None:
        """A line per batch with -v 2, else at most one a second: a first run may take thousands of batches."""
        if not self._every_batch and time.monotonic() - self._last_progress < PROGRESS_SECONDS:
            return
        self._last_progress = time.monotonic()
        self.stdout.write(f"{table}: {deleted} deleted so far")

    def _summary(self, table: TableResult, *, dry_run: bool) -> str:
        older = f"older than {table.cutoff:%Y-%m-%d %H:%M %Z}"
        if dry_run:
            return f"{table.table}: would delete {table.deleted} ({older})"
        also = "".join(
            f", with {count} {apps.get_model(label)._meta.verbose_name_plural}"
            for label, count in table.cascaded.items()
            if count
        )
        return self.style.SUCCESS(
            f"{table.table}: deleted {table.deleted} in {table.batches} batch(es) ({older}){also}"
        )
