"""Shared fixtures: a private RabbitMQ vhost, real Celery worker processes, controllable faults.

Every test session gets its own vhost (deleted at the end) and pytest-django's own database, so
tests never touch a running stack's queues or data, nor each other's.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import kombu.pools
import pytest
from django.conf import settings
from django.db import connection
from kombu import Connection, Queue

from marketplace.celery import app as celery_app
from marketplace.events import outbox, topology
from tests.support.faults import read_json_lines

ROOT = Path(__file__).resolve().parent.parent
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"

# Fast retry policy for worker processes: 2 retries after 1 s and 2 s; our database unavailable
# waits 1 s at a time.
TEST_RETRY_ENV = {
    "SUBSCRIBER_MAX_RETRIES": "2",
    "SUBSCRIBER_RETRY_BACKOFF": "1",
    "SUBSCRIBER_RETRY_BACKOFF_MAX": "8",
    "SUBSCRIBER_INFRA_RETRY_SECONDS": "1",
}
TEST_RETRY_DELAYS = (1, 2)


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([RABBITMQCTL, *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


def eventually(check, *, timeout: float = 15.0, interval: float = 0.1, message: str = "condition"):
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# --- broker --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_url():
    vhost = f"marketplace-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session", autouse=True)
def _point_everything_at_the_test_broker(broker_url, tmp_path_factory):
    settings.BROKER_URL = broker_url
    celery_app.conf.broker_url = broker_url
    # This process sees the retry queues the test workers declare (TEST_RETRY_ENV).
    settings.SUBSCRIBER_INFRA_RETRY_SECONDS = int(TEST_RETRY_ENV["SUBSCRIBER_INFRA_RETRY_SECONDS"])
    settings.SUBSCRIBER_RETRY = {
        name: {
            "max_retries": int(TEST_RETRY_ENV["SUBSCRIBER_MAX_RETRIES"]),
            "retry_backoff": int(TEST_RETRY_ENV["SUBSCRIBER_RETRY_BACKOFF"]),
            "retry_backoff_max": int(TEST_RETRY_ENV["SUBSCRIBER_RETRY_BACKOFF_MAX"]),
        }
        for name in settings.SUBSCRIBER_RETRY
    }
    settings.SUBSCRIBER_RETRY_DELAYS = {name: TEST_RETRY_DELAYS for name in settings.SUBSCRIBER_RETRY}
    os.environ["FAULTS_DIR"] = str(tmp_path_factory.mktemp("faults"))
    with Connection(broker_url) as conn:
        topology.declare(conn, settings.SUBSCRIBER_RETRY_DELAYS)


@pytest.fixture(autouse=True)
def _fresh_publisher():
    """Each test starts with no publisher thread (so no cached broker connection and no cooldown)
    and ends with its on-commit publishes done and that thread gone, with its database connection."""
    outbox.on_commit_publisher.stop()
    yield
    outbox.on_commit_publisher.stop()


@pytest.fixture
def broker(broker_url):
    with Connection(broker_url) as conn:
        conn.connect()
        yield conn


@pytest.fixture
def purge_queues(broker_url):
    """Empty every subscriber queue and dead-letter queue before the test."""
    _purge_subscriber_queues(broker_url)


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


@pytest.fixture
def event_tap(broker_url):
    tap = EventTap(broker_url)
    yield tap
    tap.delete()


def wait_for_broker(timeout: float = 60.0) -> None:
    def reachable():
        try:
            with Connection(settings.BROKER_URL, connect_timeout=1) as conn:
                conn.connect()
            return True
        except Exception:
            return False

    eventually(reachable, timeout=timeout, interval=0.5, message="RabbitMQ to accept connections")


@contextmanager
def broker_stopped():
    """Stop the RabbitMQ application for the block; always start it again, even if the test fails."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        wait_for_broker()
        # Every pooled connection in this process died with the broker. Forget them the way Celery
        # and kombu do after a fork, so later tests connect afresh.
        kombu.pools.reset()
        celery_app._after_fork()
        celery_app.control._after_fork()


# --- faults ----------------------------------------------------------------------------------


class Faults:
    """The test's handle on the controllable edges (see tests/support/faults.py)."""

    def __init__(self, directory: Path):
        self.dir = directory

    def fail_email(self, times: int | str) -> None:
        (self.dir / "email.fail").write_text(str(times))

    def delay_email(self, seconds: float) -> None:
        (self.dir / "email.delay").write_text(str(seconds))

    def crash_on_email_to(self, recipient: str) -> None:
        (self.dir / "email.crash").write_text(recipient)

    def heal(self) -> None:
        for name in ("email.fail", "email.delay", "email.crash"):
            (self.dir / name).unlink(missing_ok=True)

    def emails(self) -> list[dict]:
        return read_json_lines(self.dir, "email.log")

    def task_starts(self, task: str | None = None) -> list[dict]:
        starts = read_json_lines(self.dir, "tasks.log")
        return [s for s in starts if task is None or s["task"] == task]


@pytest.fixture
def faults():
    directory = Path(os.environ["FAULTS_DIR"])
    for path in directory.iterdir():
        path.unlink()
    return Faults(directory)


# --- worker processes ------------------------------------------------------------------------


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
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


@pytest.fixture(scope="session")
def worker_env(broker_url, django_db_setup):
    db = connection.settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "0",
        "BROKER_URL": broker_url,
        "PYTHONPATH": str(ROOT),
        **TEST_RETRY_ENV,
    }


@pytest.fixture(scope="session")
def start_worker(worker_env, tmp_path_factory):
    """Start an extra worker for a subscriber (stopped at the end of the session)."""
    log_dir = tmp_path_factory.mktemp("worker-logs")
    started: list[WorkerProcess] = []

    def start(name: str, **extra_env: str) -> WorkerProcess:
        env = {**worker_env, **extra_env}
        worker = WorkerProcess(topology.subscriber_named(name), env, log_dir).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _purge_subscriber_queues(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        conn.default_channel.queue_purge(topology.RECORDER_QUEUE_NAME)
        for subscriber in topology.SUBSCRIBERS:
            names = [subscriber.queue_name, subscriber.dead_letter_queue_name]
            names += [subscriber.retry_queue_name(delay) for delay in TEST_RETRY_DELAYS]
            for name in names:
                conn.default_channel.queue_purge(name)


def record_dead_letters(**filters):
    """Run the dead-letter recorder once, in this process; the FailedEvents matching ``filters``."""
    from django.core.management import call_command

    from marketplace.events.models import FailedEvent

    call_command("record_dead_letters", "--once", stdout=io.StringIO())
    return list(FailedEvent.objects.filter(**filters).order_by("id"))


@pytest.fixture(scope="session")
def session_workers(start_worker, broker_url):
    # Tests without workers publish events too (every committed order does); the workers must not
    # start on that backlog, whose orders are long gone from the database.
    _purge_subscriber_queues(broker_url)
    workers = {subscriber.name: start_worker(subscriber.name) for subscriber in topology.SUBSCRIBERS}
    _pause(workers, broker_url)
    return workers


def _consumer_counts(broker_url: str) -> list[int]:
    with Connection(broker_url) as conn:
        return [
            conn.default_channel.queue_declare(s.queue_name, passive=True).consumer_count for s in topology.SUBSCRIBERS
        ]


def worker_is_idle(worker: WorkerProcess) -> bool:
    return _idle([worker])


def _idle(workers: list[WorkerProcess]) -> bool:
    """No task running, prefetched or waiting for its countdown in any of ``workers``."""
    hostnames = [worker.hostname for worker in workers]
    with Connection(settings.BROKER_URL) as conn:
        inspect = celery_app.control.inspect(destination=hostnames, timeout=2, limit=len(hostnames), connection=conn)
        for ask in (inspect.active, inspect.reserved, inspect.scheduled):
            replies = ask() or {}
            if len(replies) < len(hostnames) or any(replies.values()):
                return False
    return True


def _control(command: str, worker: WorkerProcess) -> None:
    """Tell one worker to start or stop consuming its queue, over a connection of its own."""
    with Connection(settings.BROKER_URL) as conn:
        getattr(celery_app.control, command)(
            worker.subscriber.queue_name, destination=[worker.hostname], reply=True, timeout=5, connection=conn
        )


def _pause(session_workers: dict[str, WorkerProcess], broker_url: str) -> None:
    """Workers stop taking messages and finish what they hold; their queues are emptied.

    Between the tests that ask for them, workers consume nothing: events published by other tests
    would otherwise be processed against a database that is being flushed.
    """
    alive = [worker for worker in session_workers.values() if worker.process.poll() is None]
    for worker in alive:
        _control("cancel_consumer", worker)
    eventually(lambda: not any(_consumer_counts(broker_url)), message="workers to stop consuming")
    _purge_subscriber_queues(broker_url)
    eventually(lambda: _idle(alive), timeout=30, message="workers to finish the tasks they hold")


def _resume(session_workers: dict[str, WorkerProcess], broker_url: str) -> None:
    _purge_subscriber_queues(broker_url)
    for worker in session_workers.values():
        _control("add_consumer", worker)
    eventually(lambda: all(count == 1 for count in _consumer_counts(broker_url)), message="workers to consume")


@pytest.fixture
def workers(session_workers, transactional_db, faults, broker_url):
    """One live worker per subscriber, consuming only for this test, on empty queues, with clean
    fault controls and committed test data."""
    for worker in session_workers.values():
        assert worker.process.poll() is None, f"worker {worker.subscriber.name} died: {worker.log_path}"
    _resume(session_workers, broker_url)
    yield session_workers
    _pause(session_workers, broker_url)


# --- API ----------------------------------------------------------------------------------------


@pytest.fixture
def client_for():
    """``client_for(buyer)``: an API client authenticated with the buyer's token."""
    from rest_framework.test import APIClient

    from tests.factories import token_for

    def make(buyer) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(buyer)}")
        return client

    return make


@pytest.fixture
def replace_worker(session_workers, start_worker):
    """Swap a subscriber's session worker for one with extra environment (e.g. a slower backoff).

    The subscriber gets a normal worker back afterwards, so later tests find the usual set.
    """
    replaced: list[str] = []

    def replace(name: str, **extra_env: str) -> WorkerProcess:
        session_workers[name].stop()
        worker = start_worker(name, **extra_env)
        session_workers[name] = worker
        replaced.append(name)
        return worker

    yield replace
    for name in replaced:
        session_workers[name].stop()
        session_workers[name] = start_worker(name)


# --- seller webhook (an external system, mocked at its edge: a real HTTP server) ---------------


class SellerWebhook:
    """A seller's HTTP endpoint on localhost whose answers the test controls."""

    def __init__(self):
        import http.server
        import json
        import threading

        self.requests: list[dict] = []
        self.statuses: list[int] = []  # answers to give, in order; then `default_status`
        self.default_status = 200
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = webhook.statuses.pop(0) if webhook.statuses else webhook.default_status
                webhook.requests.append(
                    {"headers": dict(self.headers), "body": json.loads(body or b"null"), "status": status}
                )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/orders"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict]:
        return [r for r in self.requests if r["status"] < 300]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def seller_webhook():
    webhook = SellerWebhook()
    yield webhook
    webhook.close()
