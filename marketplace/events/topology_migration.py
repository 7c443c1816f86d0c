"""Moving the classic-queue release's queues to the quorum declarations (setup_broker --migrate).

A one-release migration: a queue whose arguments differ from topology.py is re-created as
declared, its messages moved through a temporary queue with publisher confirms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import amqp
import httpx
from kombu import Connection, Queue

from marketplace.events import topology
from marketplace.events.topology_check import ManagementApi

logger = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """The migration cannot (or must not) go on; nothing queued was dropped."""


def migration_queue_name(queue_name: str) -> str:
    return f"{queue_name}.migrating"


# A temporary queue only holds messages: no TTL, no dead-lettering, nothing consumes it. Classic,
# because only a classic queue can be deleted "if empty" (quorum queues refuse that flag).
_HOLDING_ARGUMENTS = {"x-queue-type": "classic"}


def migrate_topology(
    connection: Connection,
    management_url: str,
    *,
    retry_delays: dict[str, tuple[int, ...]] | None = None,
    report: Callable[[str], None] = print,
) -> int:
    """Re-create every queue whose arguments differ from topology.py (the previous release's
    classic queues), keeping every message; then declare the whole topology. Returns the number of
    queues migrated.

    Per queue: a temporary quorum queue takes over its bindings (so new events land there), every
    message moves to it (basic_get, publish with publisher confirms, then ack), the old queue is
    deleted and declared anew, the messages move back, the new queue gets its bindings and the
    temporary one is deleted. A run that stopped half-way is finished by the next run (a leftover
    temporary queue is emptied into its queue). Workers must be stopped: a queue with consumers is
    refused.
    """
    api = ManagementApi(management_url)
    vhost = connection.virtual_host
    try:
        actual = api.queues(vhost)
    except (httpx.HTTPError, ValueError) as exc:
        raise MigrationError(f"the migration reads queue arguments from the management API {api.url}: {exc}") from exc

    for exchange in (topology.EVENTS_EXCHANGE, topology.DEAD_LETTER_EXCHANGE):
        exchange(connection.default_channel).declare()

    queues = topology.all_queues(retry_delays)
    to_migrate = [
        q
        for q in queues
        if (q.name in actual and actual[q.name].get("arguments", {}) != q.queue_arguments)
        or migration_queue_name(q.name) in actual
    ]
    # Consumer counts from the broker itself (the management API's lag by its statistics interval).
    consumers = {
        name: connection.default_channel.queue_declare(name, passive=True).consumer_count  # type: ignore[attr-defined]  # py-amqp Channel
        for q in to_migrate
        for name in (q.name, migration_queue_name(q.name))
        if name in actual
    }
    busy = [f"{name} ({count} consumer(s))" for name, count in consumers.items() if count]
    if busy:
        raise MigrationError(
            f"queues still have consumers: {', '.join(busy)}. Stop every worker (old and new) before migrating."
        )

    for queue in to_migrate:
        _migrate_queue(connection, api, vhost, queue, actual.get(queue.name), report)
    if not to_migrate:
        report("every queue already has the arguments topology.py declares: nothing to migrate")
    topology.declare(connection, retry_delays)
    return len(to_migrate)


def _migrate_queue(
    connection: Connection,
    api: ManagementApi,
    vhost: str,
    queue: Queue,
    actual: dict[str, Any] | None,
    report: Callable[[str], None],
) -> None:
    holding = migration_queue_name(queue.name)
    wanted_bindings = sorted(topology.queue_bindings(queue))
    if actual is not None and actual.get("arguments", {}) != queue.queue_arguments:
        # py-amqp's Channel: kombu's StdChannel stub has none of its queue methods.
        channel: Any = connection.default_channel
        count = channel.queue_declare(queue.name, passive=True).message_count
        report(
            f"{queue.name}: {actual.get('type')} queue with {count} message(s) "
            f"and arguments {actual.get('arguments')}: migrating through {holding}"
        )
        if api.queue(vhost, holding) is None:
            channel.queue_declare(holding, durable=True, auto_delete=False, arguments=_HOLDING_ARGUMENTS)
        # New events land in the holding queue before the old queue stops receiving them: an event
        # published in between lands in both (a duplicate the subscriber dedupes), never in neither.
        for exchange_name, routing_key in wanted_bindings:
            channel.queue_bind(holding, exchange_name, routing_key)
        for b in api.bindings_to(vhost, queue.name):
            channel.queue_unbind(queue.name, b["source"], b["routing_key"], arguments=b.get("arguments") or {})
        moved = _move_all_then_delete(connection, queue.name, holding, source_type=actual.get("type"))
        report(f"  moved {moved} message(s) to {holding}; deleted the old {queue.name}")

    channel = connection.default_channel
    # Declared without bindings first, so that the held (older) messages are queued before new ones.
    channel.queue_declare(queue.name, durable=True, auto_delete=False, arguments=queue.queue_arguments)
    moved = _move_messages(connection, holding, queue.name)
    for exchange_name, routing_key in wanted_bindings:
        channel.queue_bind(queue.name, exchange_name, routing_key)
    for b in api.bindings_to(vhost, holding):
        channel.queue_unbind(holding, b["source"], b["routing_key"], arguments=b.get("arguments") or {})
    holding_type = (api.queue(vhost, holding) or {}).get("type")
    moved += _move_all_then_delete(connection, holding, queue.name, source_type=holding_type)
    bound = ", ".join(f"{e}" + (f" ({k})" if k else "") for e, k in wanted_bindings) or "no exchange"
    report(f"  declared {queue.name} as topology.py says (bound to {bound}); moved {moved} message(s) back")


def _move_all_then_delete(
    connection: Connection, source: str, target: str, *, source_type: str | None, attempts: int = 5
) -> int:
    """Move every message from ``source`` (no longer bound anywhere) to ``target``, then delete
    ``source`` only if it is empty."""
    moved = 0
    for _ in range(attempts):
        moved += _move_messages(connection, source, target)
        channel: Any = connection.channel()  # py-amqp's Channel (kombu's StdChannel stub lacks its methods)
        try:
            if source_type == "classic":
                channel.queue_delete(source, if_empty=True)
                return moved
            # Quorum queues refuse the if-empty flag (and RabbitMQ closes the connection for it).
            if channel.queue_declare(source, passive=True).message_count == 0:
                dropped = channel.queue_delete(source)
                if dropped:
                    raise MigrationError(f"{dropped} message(s) reached {source} while it was being deleted")
                return moved
        except connection.channel_errors as exc:
            if getattr(exc, "reply_code", None) != 406:  # PRECONDITION_FAILED: a message arrived meanwhile
                raise
        finally:
            _close_quietly(channel)
    raise MigrationError(f"{source} kept receiving messages; is something still publishing to it directly?")


def _move_messages(connection: Connection, source: str, target: str) -> int:
    """Move every message of ``source`` into ``target`` through the default exchange.

    Body, properties and headers are kept as they are. A message is acknowledged on ``source``
    only after ``target`` confirmed it, so a failure leaves it in ``source`` (at worst in both).
    """
    channel: Any = connection.channel()  # py-amqp's Channel (kombu's StdChannel stub lacks its methods)
    channel.auto_decode = False  # the body is republished byte for byte
    returned: list[str] = []
    channel.events["basic_return"].add(lambda exc, exchange, routing_key, message: returned.append(str(exc)))
    moved = 0
    try:
        while (message := channel.basic_get(queue=source, no_ack=False)) is not None:
            channel.basic_publish_confirm(
                amqp.Message(message.body, **message.properties), exchange="", routing_key=target, mandatory=True
            )
            if returned:
                raise MigrationError(f"{target} did not take a message from {source}: {returned[0]}")
            channel.basic_ack(message.delivery_info["delivery_tag"])
            moved += 1
    finally:
        _close_quietly(channel)  # unacknowledged messages go back to source
    return moved


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:
        logger.debug("closing a channel the broker had closed", exc_info=True)
