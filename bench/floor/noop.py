"""The floor's no-op subscribers: a bare Celery app whose one task only notes when it ran.

Run like a marketplace worker (``celery -A bench.floor.noop worker -Q bench.floor.<subscriber>``),
with BENCH_SUBSCRIBER naming the subscriber it stands in for. Each task appends
``order_id t_commit t_done`` to a per-process file under BENCH_DONE_DIR: that is how the harness
measures commit -> all three done without a database write in the floor's path.
"""

from __future__ import annotations

import os
import tempfile
import time

from celery import Celery

from bench.broker import floor_queues
from bench.config import FLOOR_TASK

app = Celery("bench_floor", broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,  # the same at-least-once acknowledgement as the marketplace's workers
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_queues=floor_queues(),
)

_done = {"fd": None}


def _done_fd() -> int:
    if _done["fd"] is None:
        directory = os.environ.get("BENCH_DONE_DIR", tempfile.gettempdir())
        os.makedirs(directory, exist_ok=True)
        name = f"{os.environ.get('BENCH_SUBSCRIBER', 'noop')}.{os.getpid()}"
        _done["fd"] = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return _done["fd"]


@app.task(name=FLOOR_TASK)
def noop(event: dict) -> None:
    os.write(_done_fd(), f"{event.get('order_id')} {event.get('t_commit', 0)} {time.time()}\n".encode())
