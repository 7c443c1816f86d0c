"""The bench database: create, migrate, seed, drop; and what the database says about latency."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from bench.config import (
    DEAD_LETTER_FLOOR_TABLE,
    EVENT_TYPE,
    ORDER_SUBSCRIBERS,
    PG_ADMIN_DSN,
    PYTHON,
    ROOT,
    Params,
    Target,
)
from bench.load import Workload, percentile


def _run(argv: list[str], target: Target, timeout: float = 300) -> str:
    result = subprocess.run(argv, cwd=ROOT, env=target.env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def create_database(target: Target) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target.db_name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.db_name)))


def drop_database(target: Target) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.db_name)))


def prepare(target: Target, params: Params) -> Workload:
    """Migrate, declare the marketplace topology, seed; the workload the load generators send."""
    create_database(target)
    out = _run([PYTHON, "-m", "bench.seed", str(params.products), str(params.buyers)], target)
    data = json.loads(out.split("BENCH_DATA ", 1)[1])
    return Workload(data["tokens"], data["buyer_ids"], data["products"], lines=params.lines_per_order)


def execute(target: Target, query: str, args: list | None = None) -> list[tuple]:
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        cursor = conn.execute(query, args or [])
        return cursor.fetchall() if cursor.description else []


def publish_dead_letters(target: Target, count: int, broker_share: float) -> dict:
    """``count`` dead letters of fresh events, as bench/dead_letters.py makes them (a subprocess)."""
    out = _run([PYTHON, "-m", "bench.dead_letters", str(count), "--broker-share", str(broker_share)], target)
    return json.loads(out.split("BENCH_DEAD_LETTERS ", 1)[1])


def create_dead_letter_table(target: Target) -> None:
    """The recorder baseline's table: one row per dead letter, nothing decoded."""
    execute(
        target,
        f"CREATE TABLE IF NOT EXISTS {DEAD_LETTER_FLOOR_TABLE} (id bigserial PRIMARY KEY, routing_key text NOT NULL, "
        "message_id text NOT NULL, body bytea NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())",
    )


def last_id(target: Target, table: str) -> int:
    return execute(target, f"SELECT COALESCE(max(id), 0) FROM {table}")[0][0]  # noqa: S608 - the harness's own table names


def rows_after(target: Target, table: str, after: int) -> int:
    """Rows committed in ``table`` since its id was ``after`` (cheap enough to poll: a primary key range)."""
    return execute(target, f"SELECT count(*) FROM {table} WHERE id > %s", [after])[0][0]  # noqa: S608 - as above


def failed_events_of(target: Target, event_ids: list[str]) -> int:
    """How many of ``event_ids`` have their FailedEvent."""
    return execute(target, "SELECT count(*) FROM events_failedevent WHERE event_id = ANY(%s::uuid[])", [event_ids])[0][
        0
    ]


def set_seller_webhooks(target: Target, url: str) -> None:
    execute(target, "UPDATE orders_seller SET webhook_url = %s", [url])


def effects_latency(target: Target, started: float, ended: float) -> dict:
    """Outbox row written -> the last of the subscribers' effects committed, for events in the window.

    Both timestamps are taken inside their transactions (created_at, processed_at), the same way
    on both ends; an event whose effects are not all in yet counts as incomplete.
    """
    rows = execute(
        target,
        """
        SELECT EXTRACT(EPOCH FROM max(p.processed_at) - o.created_at), count(p.id)
        FROM events_outboxevent o LEFT JOIN events_processedevent p ON p.event_id = o.event_id
        WHERE o.created_at >= to_timestamp(%s) AND o.created_at < to_timestamp(%s) AND o.event_type = %s
        GROUP BY o.id, o.created_at
        """,
        [started, ended, EVENT_TYPE],
    )
    needed = len(ORDER_SUBSCRIBERS)
    latencies = [float(lat) for lat, n in rows if n >= needed and lat is not None]
    return _latency_summary(latencies, events=len(rows))


def _latency_summary(latencies: list[float], events: int) -> dict:
    return {
        "events": events,
        "complete": len(latencies),
        **{f"p{q}_ms": _ms(percentile(latencies, q)) for q in (50, 90, 99)},
        "max_ms": _ms(max(latencies, default=None)),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def processed_by_subscriber(target: Target, started: float, ended: float) -> dict:
    """Of the events written in the window, how many each subscriber has committed."""
    rows = execute(
        target,
        """
        SELECT p.subscriber, count(*) FROM events_outboxevent o
        JOIN events_processedevent p ON p.event_id = o.event_id
        WHERE o.created_at >= to_timestamp(%s) AND o.created_at < to_timestamp(%s) AND o.event_type = %s
        GROUP BY p.subscriber
        """,
        [started, ended, EVENT_TYPE],
    )
    events = execute(
        target,
        "SELECT count(*) FROM events_outboxevent "
        "WHERE created_at >= to_timestamp(%s) AND created_at < to_timestamp(%s) AND event_type = %s",
        [started, ended, EVENT_TYPE],
    )[0][0]
    done = dict(rows)
    return {"events": events, **{s.name: done.get(s.name, 0) for s in ORDER_SUBSCRIBERS}}


def processed_span(target: Target, subscriber: str, event_ids: list[str]) -> tuple[int, float | None]:
    """How many of ``event_ids`` ``subscriber`` has committed, and the seconds from first to last."""
    rows = execute(
        target,
        "SELECT count(*), EXTRACT(EPOCH FROM max(processed_at) - min(processed_at)) "
        "FROM events_processedevent WHERE subscriber = %s AND event_id = ANY(%s::uuid[])",
        [subscriber, event_ids],
    )
    count, span = rows[0]
    return count, (float(span) if span is not None else None)


def drain_envelopes(target: Target, count: int) -> list[dict]:
    """``count`` real order.placed envelopes from the outbox, each with a fresh event id and an order
    id of its own (past every real order's), so every event is a new order to every subscriber,
    as a backlog of new orders would be: none takes a subscriber's cheaper already-seen path."""
    rows = execute(
        target, "SELECT envelope FROM events_outboxevent WHERE event_type = %s ORDER BY id DESC LIMIT 500", [EVENT_TYPE]
    )
    if not rows:
        raise RuntimeError("no outbox rows to build a backlog from")
    # Past every order any subscriber has seen, real or from an earlier backlog.
    first_id = execute(
        target,
        "SELECT GREATEST((SELECT COALESCE(max(id), 0) + 1000000 FROM orders_order), "
        "(SELECT COALESCE(max(order_id), 0) + 1 FROM segmentation_customerorder), "
        "(SELECT COALESCE(max(order_id), 0) + 1 FROM notifications_notification))",
    )[0][0]
    envelopes = []
    for i in range(count):
        envelope = rows[i % len(rows)][0]
        envelopes.append(dict(envelope, id=str(uuid.uuid4()), data=dict(envelope["data"], order_id=first_id + i)))
    return envelopes


def floor_done(done_dir: Path, started: float, ended: float) -> dict:
    """Commit -> all no-op subscribers done, for floor events committed in [started, ended)."""
    done: dict[str, list[float]] = {}
    for path in done_dir.glob("*.*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and started <= float(parts[1]) < ended:
                done.setdefault(parts[0], []).append(float(parts[2]) - float(parts[1]))
    needed = len(ORDER_SUBSCRIBERS)
    latencies = [max(v) for v in done.values() if len(v) >= needed]
    return _latency_summary(latencies, events=len(done))


def floor_done_times(done_dir: Path, subscriber: str) -> list[float]:
    times = []
    for path in done_dir.glob(f"{subscriber}.*"):
        times += [float(line.split()[2]) for line in path.read_text().splitlines() if len(line.split()) == 3]
    return times
