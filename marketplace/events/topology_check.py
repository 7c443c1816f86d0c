"""Is the broker's topology what topology.py declares? The check, and the relay's watch and heal.

Existence is checked over AMQP with passive declares, each on a fresh channel (a failed passive
declare closes its channel). Queue arguments and bindings can only be read from the RabbitMQ
management HTTP API; when it cannot be reached that is reported as a problem of its own
("bindings not checked: ..."), never as a crash.

A queue missing from the broker, or a subscriber queue no longer bound to the events fanout, is
the dangerous case: publishing still succeeds (the other subscribers' queues take the event), so
nothing else notices that one subscriber stopped receiving events. Re-declaring the topology heals
it (declaring a subscriber queue re-creates its binding); the events published in between must be
backfilled (``manage.py backfill_events``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from django.core.mail import mail_admins
from django.utils import timezone
from kombu import Connection, Queue

from marketplace.events import topology
from marketplace.events.broker import connect_once

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    message: str
    # Set when a subscriber may be missing new events (its queue or its fanout binding is gone):
    # after healing, those events need a backfill to that subscriber.
    subscriber: str | None = None
    # The check could not look (management API unreachable): nothing is known to be wrong.
    unchecked: bool = False

    def __str__(self) -> str:
        return self.message


class ManagementApi:
    """The few read calls of the RabbitMQ management HTTP API that the checks need."""

    def __init__(self, url: str, *, timeout: float = 5.0):
        parsed = httpx.URL(url)
        self.auth = (parsed.username, parsed.password) if parsed.username else None
        # Shown in messages: never the password.
        self.url = str(parsed.copy_with(username=None, password=None)).rstrip("/") + "/"
        self.timeout = timeout

    def get(self, path: str) -> Any | None:
        """The JSON at ``path`` (relative to the API root), None for 404; raises httpx.HTTPError."""
        response = httpx.get(self.url + path, auth=self.auth, timeout=self.timeout)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def create_vhost(self, vhost: str, *, user: str) -> None:
        """Create ``vhost`` (if missing) and give ``user`` every permission on it."""
        for path, body in (
            (f"vhosts/{_quote(vhost)}", {}),
            (f"permissions/{_quote(vhost)}/{_quote(user)}", {"configure": ".*", "write": ".*", "read": ".*"}),
        ):
            httpx.put(self.url + path, json=body, auth=self.auth, timeout=self.timeout).raise_for_status()

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.get(f"queues/{_quote(vhost)}/{_quote(name)}")

    def queues(self, vhost: str) -> dict[str, dict[str, Any]]:
        rows = self.get(f"queues/{_quote(vhost)}?columns=name,type,arguments") or []
        return {row["name"]: row for row in rows}

    def exchanges(self, vhost: str) -> dict[str, dict[str, Any]]:
        rows = self.get(f"exchanges/{_quote(vhost)}?columns=name,type") or []
        return {row["name"]: row for row in rows}

    def bindings_from(self, vhost: str, exchange: str) -> list[dict[str, Any]]:
        return self.get(f"exchanges/{_quote(vhost)}/{_quote(exchange)}/bindings/source") or []

    def bindings_to(self, vhost: str, queue: str) -> list[dict[str, Any]]:
        """Bindings of ``queue``, without the default exchange's implicit one."""
        return [b for b in self.get(f"queues/{_quote(vhost)}/{_quote(queue)}/bindings") or [] if b["source"]]


def _quote(name: str) -> str:
    return quote(name, safe="")


def exists(connection: Connection, declare_passively: Callable[..., Any]) -> bool:
    """Passive declare on a fresh channel: True if the entity exists, False on NOT_FOUND."""
    channel: Any = connection.channel()  # py-amqp's Channel: kombu's StdChannel stub lacks close
    try:
        declare_passively(channel)
        return True
    except connection.channel_errors as exc:
        if getattr(exc, "reply_code", None) == 404:
            return False
        raise
    finally:
        try:
            channel.close()
        except Exception:  # the broker closed it already
            logger.debug("closing a channel after a passive declare failed", exc_info=True)


def topology_problems(
    connection: Connection,
    management_url: str | None,
    *,
    retry_delays: dict[str, tuple[int, ...]] | None = None,
    timeout: float = 5.0,
) -> list[Problem]:
    """Everything about the broker that differs from topology.py, as human-readable problems.

    Changes nothing. An empty list means: both exchanges, every queue (retry queues for
    ``retry_delays`` included) with the declared arguments, and every binding exist.
    """
    problems: list[Problem] = []
    exchanges = (topology.EVENTS_EXCHANGE, topology.DEAD_LETTER_EXCHANGE)
    missing_exchanges = set()
    for exchange in exchanges:
        if not exists(connection, lambda ch, e=exchange: ch.exchange_declare(e.name, e.type, passive=True)):
            missing_exchanges.add(exchange.name)
            problems.append(Problem(f"exchange {exchange.name} is missing"))

    expected = topology.all_queues(retry_delays)
    present = []
    for queue in expected:
        if exists(connection, lambda ch, q=queue: ch.queue_declare(q.name, passive=True)):
            present.append(queue)
            continue
        subscriber = topology.subscriber_for_queue(queue.name)
        consequence = f": subscriber {subscriber.name} receives no events" if subscriber else ""
        problems.append(Problem(f"queue {queue.name} is missing{consequence}", subscriber=_name(subscriber)))

    if not management_url:
        return [*problems, Problem("bindings not checked: RABBITMQ_MANAGEMENT_URL is not set", unchecked=True)]
    api = ManagementApi(management_url, timeout=timeout)
    vhost = connection.virtual_host
    try:
        actual_exchanges = api.exchanges(vhost)
        actual_queues = api.queues(vhost)
        actual_bindings = {
            (b["source"], b["destination"], b["routing_key"])
            for exchange in exchanges
            if exchange.name not in missing_exchanges
            for b in api.bindings_from(vhost, exchange.name)
            if b["destination_type"] == "queue"
        }
    except (httpx.HTTPError, ValueError) as exc:
        problems.append(
            Problem(
                f"bindings not checked: management API {api.url} unreachable ({type(exc).__name__}: {exc}); "
                "queue arguments not checked either",
                unchecked=True,
            )
        )
        return problems

    for exchange in exchanges:
        actual_type = actual_exchanges.get(exchange.name, {}).get("type")
        if actual_type and actual_type != exchange.type:
            problems.append(Problem(f"exchange {exchange.name} is of type {actual_type}, not {exchange.type}"))

    for queue in present:
        actual = actual_queues.get(queue.name)
        if actual is not None and actual.get("arguments", {}) != queue.queue_arguments:
            problems.append(Problem(f"queue {queue.name} has {_argument_differences(actual, queue)}"))
        for exchange_name, routing_key in sorted(topology.queue_bindings(queue)):
            if exchange_name in missing_exchanges or (exchange_name, queue.name, routing_key) in actual_bindings:
                continue
            subscriber = (
                topology.subscriber_for_queue(queue.name) if exchange_name == topology.EVENTS_EXCHANGE.name else None
            )
            key = f" with routing key {routing_key}" if routing_key else ""
            consequence = f": subscriber {subscriber.name} receives no new events" if subscriber else ""
            problems.append(
                Problem(
                    f"queue {queue.name} is not bound to exchange {exchange_name}{key}{consequence}",
                    subscriber=_name(subscriber),
                )
            )

    if topology.EVENTS_EXCHANGE.name not in missing_exchanges:
        fanout = topology.EVENTS_EXCHANGE.name
        bound = [s for s in topology.SUBSCRIBERS if (fanout, s.queue_name, "") in actual_bindings]
        if len(bound) < len(topology.SUBSCRIBERS):
            names = ", ".join(s.queue_name for s in bound) or "none"
            problems.append(
                Problem(
                    f"exchange {fanout} fans out to {len(bound)} of the {len(topology.SUBSCRIBERS)} "
                    f"subscriber queues topology.py declares (bound: {names})"
                )
            )
    return problems


def _name(subscriber: topology.Subscriber | None) -> str | None:
    return subscriber.name if subscriber else None


def _argument_differences(actual: dict[str, Any], queue: Queue) -> str:
    have, want = actual.get("arguments", {}), queue.queue_arguments
    assert want is not None  # noqa: S101 - narrows the type: topology.py declares every queue with arguments
    differing = sorted(name for name in {*have, *want} if have.get(name) != want.get(name))
    details = ", ".join(f"{name}={have.get(name)!r} (want {want.get(name)!r})" for name in differing)
    hint = (
        " (a classic queue of the previous release: run setup_broker --migrate)"
        if actual.get("type") == "classic"
        else ""
    )
    return f"other arguments than topology.py declares: {details}{hint}"


# --- the relay's periodic check ---------------------------------------------------------------


@dataclass
class TopologyWatch:
    """Checks the topology every ``interval`` seconds; alerts once per distinct problem set and heals.

    The relay owns one and calls ``check_if_due()`` from its loop.
    """

    broker_url: str
    management_url: str | None
    interval: float
    retry_delays: dict[str, tuple[int, ...]] | None = None
    timeout: float = 5.0
    _next_check: float = field(default=0.0, init=False)
    # The problem set last alerted about: the same set is not mailed again every interval.
    _alerted: frozenset[str] = field(default=frozenset(), init=False)
    _last_ok_at: datetime | None = field(default=None, init=False)

    def check_if_due(self) -> list[Problem] | None:
        if time.monotonic() < self._next_check:
            return None
        self._next_check = time.monotonic() + self.interval
        try:
            return self.check()
        except Exception as exc:  # the broker is down: the relay's publishing reports that already
            logger.warning("broker topology not checked: %s: %s", type(exc).__name__, exc)
            return None

    def check(self) -> list[Problem]:
        checked_at = timezone.now()
        with self._connection() as connection:
            problems = topology_problems(
                connection, self.management_url, retry_delays=self.retry_delays, timeout=self.timeout
            )
            faults = [p for p in problems if not p.unchecked]
            if not faults:
                if self._alerted:
                    logger.info("broker topology is as declared again")
                self._alerted = frozenset()
                self._last_ok_at = checked_at
                for problem in problems:
                    logger.warning("%s", problem)
                return problems
            heal_outcome = self._heal(connection)
        key = frozenset(str(p) for p in problems)
        if key != self._alerted:
            self._alert(problems, heal_outcome)
            self._alerted = key
        return problems

    def _connection(self) -> Connection:
        connection = Connection(
            self.broker_url,
            connect_timeout=self.timeout,
            transport_options={"read_timeout": self.timeout, "write_timeout": self.timeout},
            heartbeat=0,
        )
        connect_once(connection)  # one try per node of BROKER_URL
        return connection

    def _heal(self, connection: Connection) -> str:
        try:
            topology.declare(connection, self.retry_delays)
        except Exception as exc:
            logger.error("re-declaring the broker topology failed, it is NOT healed: %s", exc)
            return f"Re-declaring the topology failed, so it is NOT healed: {exc}"
        remaining = topology_problems(connection, self.management_url, retry_delays=self.retry_delays)
        if any(not p.unchecked for p in remaining):
            logger.error("re-declared the broker topology; still wrong: %s", "; ".join(map(str, remaining)))
            return "Re-declared the topology; still wrong after that:\n" + "\n".join(f"  - {p}" for p in remaining)
        logger.warning("re-declared the broker topology: healed (missing queues and bindings re-created)")
        return "Re-declared the topology: healed (missing queues and bindings were re-created)."

    def _alert(self, problems: list[Problem], heal_outcome: str) -> None:
        lines = [f"  - {p}" for p in problems]
        logger.error("broker topology differs from topology.py: %s", "; ".join(map(str, problems)))
        body = ["The outbox relay found the RabbitMQ topology broken:", *lines, "", heal_outcome]
        gap = sorted({p.subscriber for p in problems if p.subscriber})
        if gap:
            since = self._last_ok_at.isoformat() if self._last_ok_at else "<when the queue or binding went missing>"
            body += [
                "",
                "Events published while a subscriber queue or its fanout binding was missing never reached "
                "that subscriber. A backfill is needed for the gap (subscribers dedupe by event id, so "
                "overlapping is safe):",
                *(f"  manage.py backfill_events --subscriber {name} --since {since}" for name in gap),
            ]
            if self._last_ok_at:
                body.append(f"(The topology was last seen intact at {since}.)")
        mail_admins("Broker topology broken: subscribers may miss events", "\n".join(body), fail_silently=True)
