"""Fixtures for fault tests that need more than the shared broker: a three-node RabbitMQ cluster.

The cluster is started with ``bin/rabbitmq-cluster`` (nodes rabbit-c1..c3@localhost, AMQP ports
5701-5703), once per session, and stopped and deleted at the end, unless it was already running
when the session started (then it is someone's, and only the session's vhost is removed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection

from marketplace.celery import app as celery_app
from marketplace.events import outbox, topology
from tests.support.waiting import eventually
from tests.support.workers import ROOT, WorkerProcess

CLUSTER_SCRIPT = ROOT / "bin" / "rabbitmq-cluster"
NODES = (1, 2, 3)
# Retries wait 6 s and 12 s (longer than a node takes to shut down, so a retry that starts waiting
# as the node goes down is still waiting when it is gone); the database waits 1 s (TEST_RETRY_ENV).
CLUSTER_RETRY_ENV = {"SUBSCRIBER_RETRY_BACKOFF": "6", "SUBSCRIBER_RETRY_BACKOFF_MAX": "12"}
CLUSTER_RETRY_DELAYS = (1, 6, 12)


def node_name(node: int) -> str:
    return f"rabbit-c{node}@localhost"


def node_number(name: str) -> int:
    return int(name.split("@")[0].removeprefix("rabbit-c"))


class RabbitCluster:
    """Handle on the local three-node cluster: its URLs, rabbitmqctl, and stopping a node."""

    def __init__(self):
        self.stopped: set[int] = set()

    def script(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"bin/rabbitmq-cluster {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def ctl(self, *args: str, node: int | None = None) -> str:
        """rabbitmqctl against ``node``, by default any node that is not stopped."""
        node = node or min(set(NODES) - self.stopped)
        return self.script("ctl", str(node), *args)

    def url(self, vhost: str) -> str:
        """The failover BROKER_URL: every node, in order, separated by ";"."""
        return ";".join(f"amqp://guest:guest@127.0.0.1:{5700 + node}/{vhost}" for node in NODES)

    def leaders(self, vhost: str) -> dict[str, str]:
        """Queue name -> the node leading it (quorum queues)."""
        rows = json.loads(self.ctl("list_queues", "-q", "-p", vhost, "name", "leader", "--formatter", "json"))
        return {row["name"]: row["leader"] for row in rows}

    def stop_node(self, node: int) -> None:
        self.script("stop-node", str(node))
        self.stopped.add(node)

    def start_node(self, node: int) -> None:
        self.script("start-node", str(node))
        self.stopped.discard(node)


@pytest.fixture(scope="session")
def rabbit_cluster():
    cluster = RabbitCluster()
    try:
        output = cluster.script("up")
    except RuntimeError:
        # A cluster left half-built (killed while joining, say) cannot heal itself; its data is
        # only ever tests' and tries', so it is rebuilt from nothing.
        cluster.script("down")
        output = cluster.script("up")
    started_here = "already up" not in output
    yield cluster
    if started_here:
        cluster.script("down")
    else:
        for node in sorted(cluster.stopped):
            cluster.start_node(node)


@pytest.fixture(scope="session")
def cluster_broker_url(rabbit_cluster):
    """A vhost of this session's own on the cluster, with the topology (and the cluster workers'
    retry queues) declared through node 1, so node 1 leads every queue: the client-local leader
    locator."""
    vhost = f"marketplace-test-{uuid.uuid4().hex[:10]}"
    rabbit_cluster.ctl("add_vhost", vhost)
    rabbit_cluster.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = rabbit_cluster.url(vhost)
    with Connection(url) as conn:
        topology.declare(conn, {s.name: CLUSTER_RETRY_DELAYS for s in topology.SUBSCRIBERS})
    yield url
    rabbit_cluster.ctl("delete_vhost", vhost)


@pytest.fixture
def on_cluster(cluster_broker_url):
    """This process publishes to the cluster for the test (and to the shared broker afterwards)."""
    before = settings.BROKER_URL, celery_app.conf.broker_url
    outbox.on_commit_publisher.stop()
    settings.BROKER_URL = celery_app.conf.broker_url = cluster_broker_url
    yield cluster_broker_url
    outbox.on_commit_publisher.stop()  # its connection is to the cluster
    settings.BROKER_URL, celery_app.conf.broker_url = before


@dataclass
class Relay:
    """``manage.py relay_outbox``: publishes what a request could not (e.g. while a node died)."""

    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def cluster_system(on_cluster, worker_env, transactional_db, faults, tmp_path):
    """Two worker processes per subscriber and one outbox relay, all with the cluster's failover
    BROKER_URL; stopped (before the database is flushed) at the end of the test."""
    # No management API: the relay's topology check then checks queues only (RabbitMQ's API on
    # 15672 belongs to the shared node, which knows nothing of this vhost).
    env = {**worker_env, **CLUSTER_RETRY_ENV, "BROKER_URL": on_cluster, "RABBITMQ_MANAGEMENT_URL": ""}
    workers = [WorkerProcess(subscriber, env, tmp_path) for subscriber in topology.SUBSCRIBERS for _ in range(2)]
    relay_log = tmp_path / "relay.log"
    with open(relay_log, "w") as log:
        relay = Relay(
            subprocess.Popen(
                [sys.executable, "manage.py", "relay_outbox"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            relay_log,
        )
    try:
        # Started side by side: each worker needs several seconds to boot on a busy machine.
        with ThreadPoolExecutor(len(workers)) as pool:
            list(pool.map(WorkerProcess.start, workers))
        eventually(
            lambda: all(count == 2 for count in consumer_counts(on_cluster).values()),
            timeout=60,
            message="two consumers on every subscriber queue",
        )
        yield {"workers": workers, "relay": relay}
    finally:
        for worker in workers:
            if worker.process is not None:
                worker.stop()
        relay.stop()


def consumer_counts(url: str) -> dict[str, int]:
    with Connection(url) as conn:
        return {
            s.queue_name: conn.default_channel.queue_declare(s.queue_name, passive=True).consumer_count
            for s in topology.SUBSCRIBERS
        }
