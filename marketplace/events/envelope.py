"""The event envelope: the contract between the order service and every subscriber.

Documented in docs/events.md; the JSON Schema for each (type, version) ships in ./schemas.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

SCHEMA_DIR = Path(__file__).parent / "schemas"
SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"


class InvalidEnvelope(ValueError):
    """The message is not an event this service understands: never worth retrying."""


def build_envelope(
    *, event_type: str, version: int, data: dict[str, Any], occurred_at: datetime, correlation_id: str
) -> dict[str, Any]:
    return {
        "specversion": SPEC_VERSION,
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": version,
        "source": settings.EVENTS_SOURCE,
        "occurred_at": rfc3339(occurred_at),
        "correlation_id": correlation_id,
        "datacontenttype": CONTENT_TYPE,
        "data": data,
    }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schema_path(event_type: str, version: int) -> Path:
    return SCHEMA_DIR / f"{event_type}.v{version}.json"


@cache
def _validator(event_type: str, version: int) -> Draft202012Validator:
    path = schema_path(event_type, version)
    if not path.exists():
        raise InvalidEnvelope(f"unknown event {event_type!r} version {version!r}")
    return Draft202012Validator(json.loads(path.read_text()), format_checker=FormatChecker())


def validate_envelope(envelope: Any) -> dict[str, Any]:
    """Return the envelope if it matches the schema of its type and version, else raise."""
    if not isinstance(envelope, dict):
        raise InvalidEnvelope(f"an event is a JSON object, got {type(envelope).__name__}")
    event_type, version = envelope.get("type"), envelope.get("version")
    if not isinstance(event_type, str) or not isinstance(version, int):
        raise InvalidEnvelope("an event needs a string 'type' and an integer 'version'")
    try:
        _validator(event_type, version).validate(envelope)
    except ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(root)"
        raise InvalidEnvelope(f"{event_type} v{version} fails its schema at {where}: {exc.message}") from exc
    return envelope
