"""The test session's RabbitMQ: vhosts, what a vhost holds, queue depths, an event tap.

Vhosts and listings go through the management HTTP API (bin/setup enables it), not rabbitmqctl: each
rabbitmqctl call boots an Erlang VM, about 0.7 s of CPU, and the suite makes dozens. rabbitmqctl stays
for what only it tells exactly (tests/subscribers/test_hostile_messages.py's unacknowledged counts).
"""

from __future__ import annotations

import shutil
import time
import uuid
from urllib.parse import quote

import httpx
from django.conf import settings
from kombu import Connection, Queue

from marketplace.events import topology
from marketplace.events.topology_check import ManagementApi

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def management_api() -> ManagementApi:
    return ManagementApi(settings.RABBITMQ_MANAGEMENT_URL, timeout=60)


def add_vhost(name: str) -> str:
    """Create vhost ``name``, open to guest; its AMQP URL."""
    management_api().create_vhost(name, user="guest")
    return f"amqp://guest:guest@127.0.0.1:5672/{quote(name, safe='')}"


def delete_vhost(name: str) -> None:
    api = management_api()
    httpx.delete(f"{api.url}vhosts/{quote(name, safe='')}", auth=api.auth, timeout=api.timeout).raise_for_status()


def queues_in(vhost: str) -> dict[str, dict]:
    """name -> the queue's management API row (``durable``, ``arguments`` as a dict, ...)."""
    return {row["name"]: row for row in management_api().get(f"queues/{quote(vhost, safe='')}") or []}


def bindings_in(vhost: str) -> set[tuple[str, str, str]]:
    """(exchange, queue, routing key) of every binding, without the default exchange's implicit ones."""
    rows = management_api().get(f"bindings/{quote(vhost, safe='')}") or []
    return {(row["source"], row["destination"], row["routing_key"]) for row in rows if row["source"]}


def queue_depth(conn: Connection, name: str) -> int:
    _, count, _ = conn.default_channel.queue_declare(queue=name, passive=True)
    return count


class EventTap:
    """A durable queue of the test's own, bound to the events exchange: a subscriber that
    orders/ never heard of. It survives a broker restart; every drain uses a fresh connection."""

    def __init__(self, broker_url: str):
        self.broker_url = broker_url
        self.queue = Queue(f"test.tap.{uuid.uuid4().hex[:8]}", exchange=topology.EVENTS_EXCHANGE, durable=True)
        with Connection(broker_url) as conn:
            self.queue(conn.default_channel).declare()

    def drain(self, *, expected: int | None = None, timeout: float = 10.0, quiet: float = 0.5) -> list:
        """Collect messages until ``expected`` arrived (or none are expected) and then
        nothing more came for ``quiet`` seconds, or ``timeout`` passed."""
        messages = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        with Connection(self.broker_url) as conn:
            bound = self.queue(conn.default_channel)
            while time.monotonic() < deadline:
                message = bound.get(no_ack=True)
                if message is not None:
                    messages.append(message)
                    last = time.monotonic()
                    continue
                if (expected is None or len(messages) >= expected) and time.monotonic() - last > quiet:
                    break
                time.sleep(0.05)
        return messages

    def delete(self) -> None:
        with Connection(self.broker_url) as conn:
            conn.default_channel.queue_delete(self.queue.name)


def purge_subscriber_queues(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        conn.default_channel.queue_purge(topology.RECORDER_QUEUE_NAME)
        for subscriber in topology.SUBSCRIBERS:
            names = [subscriber.queue_name, subscriber.dead_letter_queue_name]
            names += [subscriber.retry_queue_name(delay) for delay in settings.SUBSCRIBER_RETRY_DELAYS[subscriber.name]]
            for name in names:
                conn.default_channel.queue_purge(name)


def consumer_counts(broker_url: str) -> list[int]:
    with Connection(broker_url) as conn:
        return [
            conn.default_channel.queue_declare(s.queue_name, passive=True).consumer_count for s in topology.SUBSCRIBERS
        ]
