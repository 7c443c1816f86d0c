"""The event envelope: the contract between the order service and every subscriber.

Documented in docs/events.md; the JSON Schema for each (type, version) ships in ./schemas.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastjsonschema
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from marketplace import tracing

SCHEMA_DIR = Path(__file__).parent / "schemas"
SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"


class InvalidEnvelope(ValueError):
    """The message is not an event this service understands: never worth retrying."""


class ForeignEvent(InvalidEnvelope):
    """An event of another deployment (another database), e.g. left in a shared RabbitMQ vhost."""


def build_envelope(
    *,
    event_type: str,
    version: int,
    data: dict[str, Any],
    occurred_at: datetime,
    correlation_id: str,
    source: str | None = None,
) -> dict[str, Any]:
    """``source`` names the producer (CloudEvents); by default the order service, EVENTS_SOURCE.

    With tracing on, the event records the operation creating it (the API request, the handling of
    the event that caused it) as the CloudEvents distributed-tracing attributes ``traceparent`` and
    ``tracestate``: every process it reaches continues that trace (marketplace/events/tracing.py)."""
    return {
        "specversion": SPEC_VERSION,
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": version,
        "source": source or settings.EVENTS_SOURCE,
        "deployment": deployment(),
        "occurred_at": rfc3339(occurred_at),
        "correlation_id": correlation_id,
        **tracing.current_trace_context(),
        "datacontenttype": CONTENT_TYPE,
        "data": data,
    }


@cache
def deployment() -> str:
    """Which deployment this process belongs to: EVENTS_DEPLOYMENT, or else its database's
    identity (name, the PostgreSQL cluster's system identifier, the database's OID), so that a
    new database is a new deployment without anyone naming it. Every event carries it."""
    if settings.EVENTS_DEPLOYMENT:
        return cast(str, settings.EVENTS_DEPLOYMENT)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), oid FROM pg_database WHERE datname = current_database()")
        name, oid = cursor.fetchone()
        try:
            with transaction.atomic():
                cursor.execute("SELECT system_identifier FROM pg_control_system()")
                cluster = cursor.fetchone()[0]
        except DatabaseError:  # a managed PostgreSQL that does not grant it: the OID still tells apart
            cluster = "-"
    return f"{name}@{cluster}/{oid}"


def check_deployment(envelope: dict[str, Any]) -> None:
    """Refuse an event of another deployment. One without a deployment (published before events
    carried one) is ours only if our outbox has it."""
    own = deployment()
    theirs = envelope.get("deployment")
    if theirs == own:
        return
    if theirs is None:
        from marketplace.events.models import OutboxEvent

        if OutboxEvent.objects.filter(event_id=envelope["id"]).exists():
            return
        raise ForeignEvent(
            f"event {envelope['id']} names no deployment and is not in this deployment's outbox "
            f"({own}): it was published elsewhere"
        )
    raise ForeignEvent(f"event {envelope['id']} belongs to deployment {theirs!r}, not to this one ({own!r})")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schema_path(event_type: str, version: int) -> Path:
    return SCHEMA_DIR / f"{event_type}.v{version}.json"


@cache
def _validator(event_type: str, version: int) -> Callable[[Any], Any]:
    """The schema compiled to Python (fastjsonschema): every subscriber validates every event it
    handles, and the reference implementation (jsonschema, which the tests check the schemas and
    these results with) costs more than most handlers."""
    path = schema_path(event_type, version)
    if not path.exists():
        raise InvalidEnvelope(f"unknown event {event_type!r} version {version!r}")
    return fastjsonschema.compile(json.loads(path.read_text()), formats={"uuid": UUID_PATTERN})


UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def validate_envelope(envelope: Any) -> dict[str, Any]:
    """Return the envelope if it matches the schema of its type and version, else raise."""
    if not isinstance(envelope, dict):
        raise InvalidEnvelope(f"an event is a JSON object, got {type(envelope).__name__}")
    event_type, version = envelope.get("type"), envelope.get("version")
    if not isinstance(event_type, str) or not isinstance(version, int):
        raise InvalidEnvelope("an event needs a string 'type' and an integer 'version'")
    try:
        _validator(event_type, version)(envelope)
    except fastjsonschema.JsonSchemaValueException as exc:
        # exc.path starts at the root, which fastjsonschema calls "data": drop it.
        where = "/".join(exc.path[1:]) or "(root)"
        detail = exc.message.removeprefix(exc.name).strip()  # type: ignore[arg-type]  # compiled validators set name
        raise InvalidEnvelope(f"{event_type} v{version} fails its schema at {where}: {detail}") from exc
    return envelope
