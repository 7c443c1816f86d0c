"""The recorder's floor: a plain kombu consumer of dead letters, nothing of the marketplace in it.

``python -m bench.floor.dead_letter_consumer QUEUE --prefetch N``: basic.consume on QUEUE with a
prefetch of N (the recorder's); for each message one INSERT of its routing key, task id and body
into a simple table, in a transaction of its own (autocommit), then the acknowledgement. No
decoding, no headers kept, no lookup. Runs until SIGTERM; DATABASE_URL and BENCH_BROKER_URL say
where.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal

import psycopg
from kombu import Connection, Consumer, Queue

from bench.config import DEAD_LETTER_FLOOR_TABLE

# The table name is a constant of bench/config.py; the values are parameters.
INSERT = f"INSERT INTO {DEAD_LETTER_FLOOR_TABLE} (routing_key, message_id, body) VALUES (%s, %s, %s)"  # noqa: S608


def main(queue: str, prefetch: int) -> None:
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    dsn = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as db, Connection(os.environ["BENCH_BROKER_URL"]) as broker:
        insert = db.cursor()

        def record(message) -> None:
            properties = message.properties or {}
            body = message.body if isinstance(message.body, bytes) else message.body.encode("utf-8", "surrogateescape")
            insert.execute(
                INSERT,
                [message.delivery_info.get("routing_key", ""), properties.get("correlation_id") or "", body],
            )
            message.ack()

        channel = broker.default_channel
        channel.basic_qos(0, prefetch, False)
        with Consumer(channel, queues=[Queue(queue, no_declare=True)], on_message=record):
            while not stopping:
                with contextlib.suppress(TimeoutError):
                    broker.drain_events(timeout=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("queue")
    parser.add_argument("--prefetch", type=int, required=True)
    args = parser.parse_args()
    main(args.queue, args.prefetch)
