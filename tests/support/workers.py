"""Real Celery worker processes for the tests: starting, pausing and inspecting them."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection

from marketplace.celery import app as celery_app
from marketplace.events import topology
from tests.support.broker import consumer_counts, purge_subscriber_queues
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]

# Fast retry policy for worker processes: 2 retries after 1 s and 2 s; our database unavailable
# waits 1 s at a time.
TEST_RETRY_ENV = {
    "SUBSCRIBER_MAX_RETRIES": "2",
    "SUBSCRIBER_RETRY_BACKOFF": "1",
    "SUBSCRIBER_RETRY_BACKOFF_MAX": "8",
    "SUBSCRIBER_INFRA_RETRY_SECONDS": "1",
}
TEST_RETRY_DELAYS = (1, 2)


class WorkerProcess:
    """A real ``celery worker`` process for one subscriber queue, in its own process group."""

    def __init__(self, subscriber: topology.Subscriber, env: dict[str, str], log_dir: Path):
        self.subscriber = subscriber
        self.env = env
        self.log_path = log_dir / f"{subscriber.name}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None
        self.hostname = f"{subscriber.name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"

    def start(self) -> WorkerProcess:
        self.log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "marketplace",
                "worker",
                "-Q",
                self.subscriber.queue_name,
                "-n",
                self.hostname,
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_until_ready(self) -> WorkerProcess:
        eventually(self._ready, timeout=60, interval=0.2, message=f"worker {self.subscriber.name} to be ready")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"worker {self.subscriber.name} exited:\n{self.log_path.read_text()[-3000:]}")
        return "ready." in self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if stop_process_group(self.process):
            self.log.close()


def stop_process_group(process: subprocess.Popen | None, timeout: float = 20) -> bool:
    """SIGTERM the process group ``process`` leads, SIGKILL it after ``timeout``; False if it had
    already exited (or never started)."""
    if process is None or process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    return True


def record_dead_letters(**filters):
    """Run the dead-letter recorder once, in this process; the FailedEvents matching ``filters``."""
    from django.core.management import call_command

    from marketplace.events.models import FailedEvent

    call_command("record_dead_letters", "--once", stdout=io.StringIO())
    return list(FailedEvent.objects.filter(**filters).order_by("id"))


def worker_is_idle(worker: WorkerProcess) -> bool:
    return idle([worker])


def idle(workers: list[WorkerProcess]) -> bool:
    """No task running, prefetched or waiting for its countdown in any of ``workers``."""
    hostnames = [worker.hostname for worker in workers]
    with Connection(settings.BROKER_URL) as conn:
        inspect = celery_app.control.inspect(destination=hostnames, timeout=2, limit=len(hostnames), connection=conn)
        for ask in (inspect.active, inspect.reserved, inspect.scheduled):
            replies = ask() or {}
            if len(replies) < len(hostnames) or any(replies.values()):
                return False
    return True


def control(command: str, worker: WorkerProcess) -> None:
    """Tell one worker to start or stop consuming its queue, over a connection of its own."""
    with Connection(settings.BROKER_URL) as conn:
        getattr(celery_app.control, command)(
            worker.subscriber.queue_name, destination=[worker.hostname], reply=True, timeout=5, connection=conn
        )


def pause(session_workers: dict[str, WorkerProcess], broker_url: str) -> None:
    """Workers stop taking messages and finish what they hold; their queues are emptied.

    Between the tests that ask for them, workers consume nothing: events published by other tests
    would otherwise be processed against a database that is being flushed.
    """
    alive = [worker for worker in session_workers.values() if worker.process.poll() is None]
    for worker in alive:
        control("cancel_consumer", worker)
    eventually(lambda: not any(consumer_counts(broker_url)), message="workers to stop consuming")
    purge_subscriber_queues(broker_url)
    eventually(lambda: idle(alive), timeout=30, message="workers to finish the tasks they hold")


def resume(session_workers: dict[str, WorkerProcess], broker_url: str) -> None:
    purge_subscriber_queues(broker_url)
    for worker in session_workers.values():
        control("add_consumer", worker)
    eventually(
        lambda: all(count == 1 for count in consumer_counts(broker_url)), timeout=30, message="workers to consume"
    )
