from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.events.asyncapi import asyncapi_json

REGENERATE = "manage.py asyncapi --output docs/asyncapi.json"


class Command(BaseCommand):
    help = (
        "Write the AsyncAPI 3.0 document of the event API, generated from marketplace/events/topology.py and "
        "the JSON Schemas in marketplace/events/schemas/ (what /api/asyncapi.json serves). --check compares "
        "the file with the generator instead and fails when they differ."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, help="Write to this file (default: standard output).")
        parser.add_argument(
            "--check", action="store_true", help="Change nothing; exit non-zero if --output differs from the generator."
        )

    def handle(self, *args: Any, output: Path | None, check: bool, **options: Any) -> None:
        document = asyncapi_json()
        if check:
            if output is None:
                raise CommandError("--check needs --output, the file to compare")
            if not output.exists() or output.read_text() != document:
                raise CommandError(f"{output} is not what the generator produces; regenerate it: {REGENERATE}")
            self.stdout.write(f"{output} is up to date")
        elif output is None:
            self.stdout.write(document, ending="")
        else:
            output.write_text(document)
            self.stdout.write(self.style.SUCCESS(f"wrote {output}"))
