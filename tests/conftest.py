"""Shared fixtures: a private RabbitMQ vhost, real Celery worker processes, controllable faults.

Every test session gets its own vhost (deleted at the end) and pytest-django's own database, so
tests never touch a running stack's queues or data, nor each other's. What the fixtures use
lives in tests/support/ (broker, workers, faults, webhooks, waiting).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import django.test
import pytest
from django.conf import settings
from django.db import connection
from django.http import HttpRequest
from kombu import Connection

from marketplace.celery import app as celery_app
from marketplace.events import outbox, topology
from tests.support.broker import EventTap, add_vhost, delete_vhost, purge_subscriber_queues
from tests.support.faults import Faults
from tests.support.recorder import RecorderProcess
from tests.support.tcp_proxy import TcpProxy
from tests.support.webhooks import SellerWebhook
from tests.support.workers import (
    ROOT,
    TEST_RETRY_DELAYS,
    TEST_RETRY_ENV,
    WorkerProcess,
    pause,
    resume,
)

# Every Celery worker the tests start, their own or the harnesses' (bench, fault ledger), inherits
# this: Django's system checks, which Celery runs at each worker's boot, are a quarter of its CPU, the
# suite starts dozens of workers on the same settings, and tests/security runs the checks themselves.
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

# --- distribution --------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` first: spread over processes (bin/test), the last one started would
    otherwise end the run alone on one core.

    And refuse to run when pytest-xdist's groups would be silently ignored: an xdist process tags a
    grouped test by appending "@<group>" to its node id, and a pytest that no longer lets it (9.2
    with xdist 3.8) would boot a group's expensive fixture on every process (pyproject.toml)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order
    if not config.getoption("loadgroup", default=False):
        return  # not an xdist process under --dist loadgroup
    untagged = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if untagged:
        raise pytest.UsageError(
            f"--dist loadgroup: pytest-xdist could not tag {untagged[0]} with its group; this pytest and "
            "pytest-xdist no longer work together (see the pytest pin in pyproject.toml)"
        )


# --- broker --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_url():
    vhost = f"marketplace-test-{uuid.uuid4().hex[:10]}"
    yield add_vhost(vhost)
    delete_vhost(vhost)


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
    purge_subscriber_queues(broker_url)


@pytest.fixture
def event_tap(broker_url):
    tap = EventTap(broker_url)
    yield tap
    tap.delete()


# --- faults ----------------------------------------------------------------------------------


@pytest.fixture
def faults():
    directory = Path(os.environ["FAULTS_DIR"])
    for path in directory.iterdir():
        path.unlink()
    return Faults(directory)


# --- worker processes ------------------------------------------------------------------------


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

    def start(name: str, *, wait: bool = True, **extra_env: str) -> WorkerProcess:
        env = {**worker_env, **extra_env}
        worker = WorkerProcess(topology.subscriber_named(name), env, log_dir).start()
        started.append(worker)
        return worker.wait_until_ready() if wait else worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def session_workers(start_worker, broker_url):
    # Tests without workers publish events too (every committed order does); the workers must not
    # start on that backlog, whose orders are long gone from the database.
    purge_subscriber_queues(broker_url)
    # Booted side by side: each takes seconds to import and connect, and they do not depend on each other.
    workers = {subscriber.name: start_worker(subscriber.name, wait=False) for subscriber in topology.SUBSCRIBERS}
    for worker in workers.values():
        worker.wait_until_ready()
    pause(workers, broker_url)
    return workers


@pytest.fixture
def workers(session_workers, transactional_db, faults, broker_url):
    """One live worker per subscriber, consuming only for this test, on empty queues, with clean
    fault controls and committed test data."""
    for worker in session_workers.values():
        assert worker.process.poll() is None, f"worker {worker.subscriber.name} died: {worker.log_path}"
    resume(session_workers, broker_url)
    yield session_workers
    pause(session_workers, broker_url)


@pytest.fixture(scope="session")
def start_recorder(worker_env, broker_url, tmp_path_factory):
    """Start a real ``record_dead_letters`` process (stopped at the end of the session at the latest)."""
    log_dir = tmp_path_factory.mktemp("recorder-logs")
    started: list[RecorderProcess] = []

    def start() -> RecorderProcess:
        recorder = RecorderProcess(worker_env, log_dir, broker_url).start()
        started.append(recorder)
        return recorder

    yield start
    for recorder in started:
        recorder.stop()


@pytest.fixture
def recorder(start_recorder, workers):
    """A live dead-letter recorder for this test only: other tests record with ``--once`` in process
    and must find the recorder's inbox unconsumed."""
    process = start_recorder()
    yield process
    process.stop()


# --- logins -------------------------------------------------------------------------------------


class Client(django.test.Client):
    """Django's test client, whose login() hands authenticate() a request, as django-axes (first of
    AUTHENTICATION_BACKENDS) requires of every caller; Django's own passes none and would raise
    AxesBackendRequestParameterRequired. force_login() authenticates nothing: it needs no help."""

    def login(self, **credentials) -> bool:
        request = HttpRequest()
        request.META["REMOTE_ADDR"] = "127.0.0.1"  # where the test client's own requests come from
        return super().login(request=request, **credentials)


@pytest.fixture
def client() -> Client:
    """pytest-django's ``client``, with a login() that django-axes accepts."""
    return Client()


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


@pytest.fixture
def seller_webhook():
    webhook = SellerWebhook()
    yield webhook
    webhook.close()


# --- the database, unreachable on purpose ------------------------------------------------------


@pytest.fixture
def database_proxy():
    """A TCP proxy in front of the test database, to cut and restore: PostgreSQL unreachable for
    whoever connects through it, and for no one else."""
    database = connection.settings_dict
    proxy = TcpProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432))
    yield proxy
    proxy.cut()
