"""The bench vhost: creating it, declaring the floor's fanout, queue depths, bulk publishing."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable
from urllib.parse import quote

import httpx
from kombu import Connection, Exchange, Producer, Queue, binding

from bench.config import (
    DEAD_LETTER_FLOOR_QUEUE,
    FLOOR_EXCHANGE,
    FLOOR_TASK,
    ORDER_SUBSCRIBERS,
    Target,
    floor_queue_name,
)
from marketplace.events import topology

MANAGEMENT = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


def _vhost(target: Target) -> str:
    return quote(target.vhost, safe="")


def create_vhost(target: Target) -> None:
    """Through the management API (what ``rabbitmqctl add_vhost`` + ``set_permissions`` do, faster)."""
    httpx.put(f"{MANAGEMENT}/vhosts/{_vhost(target)}", auth=AUTH, timeout=30).raise_for_status()
    httpx.put(
        f"{MANAGEMENT}/permissions/{_vhost(target)}/guest",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=AUTH,
        timeout=30,
    ).raise_for_status()


def delete_vhost(target: Target) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.delete(f"{MANAGEMENT}/vhosts/{_vhost(target)}", auth=AUTH, timeout=30)


def rabbitmq_version() -> str:
    try:
        return httpx.get(f"{MANAGEMENT}/overview", auth=AUTH, timeout=10).json().get("rabbitmq_version", "?")
    except (httpx.HTTPError, ValueError):
        return "?"


def floor_exchange() -> Exchange:
    return Exchange(FLOOR_EXCHANGE, type="fanout", durable=True)


def floor_queues() -> list[Queue]:
    """One queue per marketplace subscriber, of the same queue type, bound to the floor fanout."""
    return [
        Queue(
            floor_queue_name(sub),
            durable=True,
            bindings=[binding(floor_exchange())],
            queue_arguments={"x-queue-type": topology.QUEUE_TYPE},
        )
        for sub in ORDER_SUBSCRIBERS
    ]


def declare_floor(target: Target) -> None:
    with Connection(target.broker_url) as conn:
        floor_exchange().declare(channel=conn.default_channel)
        for queue in floor_queues():
            queue(conn.default_channel).declare()


def dead_letter_floor_queue() -> Queue:
    """The recorder baseline's queue: bound to the dead-letter exchange like the recorder's queue
    (every subscriber's ``.dead`` key), of the same type, so it gets a copy of every dead letter."""
    return Queue(
        DEAD_LETTER_FLOOR_QUEUE,
        durable=True,
        bindings=[
            binding(topology.DEAD_LETTER_EXCHANGE, routing_key=s.dead_letter_queue_name) for s in topology.SUBSCRIBERS
        ],
        queue_arguments={"x-queue-type": topology.QUEUE_TYPE},
    )


def declare_dead_letter_floor(target: Target) -> None:
    with Connection(target.broker_url) as conn:
        dead_letter_floor_queue()(conn.default_channel).declare()


def delete_queues(target: Target, names: Iterable[str]) -> None:
    """Delete bench-only queues (their bindings go with them)."""
    with Connection(target.broker_url, connect_timeout=5) as conn:
        for name in names:
            with contextlib.suppress(conn.channel_errors):
                conn.default_channel.queue_delete(name)


def _passive(conn: Connection, name: str) -> tuple[int, int]:
    channel = conn.channel()
    try:
        _, messages, consumers = channel.queue_declare(queue=name, passive=True)
        return messages, consumers
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def depths(target: Target, names: Iterable[str]) -> dict[str, int]:
    """Messages ready in each queue (passive declare: exact, unlike the management API's 5 s stats)."""
    with Connection(target.broker_url, connect_timeout=5) as conn:
        return {name: _passive(conn, name)[0] for name in names}


def consumers(target: Target, name: str) -> int:
    with Connection(target.broker_url, connect_timeout=5) as conn:
        return _passive(conn, name)[1]


def purge(target: Target, names: Iterable[str]) -> None:
    with Connection(target.broker_url, connect_timeout=5) as conn:
        for name in names:
            with contextlib.suppress(conn.channel_errors):
                conn.default_channel.queue_purge(name)


def subscriber_queues() -> list[str]:
    return [s.queue_name for s in topology.SUBSCRIBERS]


def all_bench_queues() -> list[str]:
    names = [q.name for q in topology.all_queues()] + [floor_queue_name(s) for s in ORDER_SUBSCRIBERS]
    return names


def publish_envelopes(target: Target, envelopes: Iterable[dict]) -> int:
    """Publish raw event envelopes to the marketplace fanout, publisher-confirmed, as the relay does."""
    sent = 0
    with Connection(target.broker_url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.default_channel, exchange=topology.EVENTS_EXCHANGE)
        for envelope in envelopes:
            producer.publish(envelope, serializer="json", delivery_mode=2, message_id=str(envelope["id"]), retry=False)
            sent += 1
    return sent


def publish_noop_tasks(target: Target, queue: str, count: int, *, task: str = FLOOR_TASK) -> list[str]:
    """``count`` no-op Celery task messages of ``task`` straight into ``queue`` (default
    exchange); the event ids they carry."""
    from bench.floor.noop import app

    ids = [str(uuid.uuid4()) for _ in range(count)]
    with Connection(target.broker_url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.default_channel)
        for i, event_id in enumerate(ids):
            task_id = str(uuid.uuid4())
            args = [{"id": event_id, "order_id": i, "t_commit": time.time()}]
            message = app.amqp.as_task_v2(task_id, task, args=args)
            producer.publish(
                message.body,
                routing_key=queue,
                headers=message.headers,
                serializer="json",
                delivery_mode=2,
                retry=False,
                **message.properties,
            )
    return ids


def retry_queue_names(target: Target) -> list[str]:
    """The subscribers' retry queues that exist (their waits come from settings, so list them)."""
    queues = httpx.get(f"{MANAGEMENT}/queues/{_vhost(target)}?columns=name", auth=AUTH, timeout=10).json()
    prefixes = tuple(f"{sub.queue_name}.retry." for sub in topology.SUBSCRIBERS)
    return [q["name"] for q in queues if q["name"].startswith(prefixes)]


def retrying(target: Target) -> dict[str, int]:
    """Messages waiting in each subscriber's retry queues now (exact: passive declares)."""
    depth = depths(target, retry_queue_names(target))
    return {
        sub.name: sum(n for name, n in depth.items() if name.startswith(f"{sub.queue_name}.retry."))
        for sub in topology.SUBSCRIBERS
    }
