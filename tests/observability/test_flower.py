"""Flower's own /metrics, behind its basic auth (marketplace/metrics/flower.py)."""

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.waiting import eventually
from tests.support.workers import ROOT

pytestmark = [pytest.mark.broker]

FLOWER_CREDENTIALS = ("ops", "flower-s3cret")
OURS = ["-m", "marketplace.metrics.flower"]  # as the Procfile and docker-compose.yml run it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def flower(command: list[str], broker_url: str, tmp_path: Path, **env: str | None):
    """Start Flower with ``env`` (None: unset) on a free port; yield its URL and process."""
    port = _free_port()
    environment = {**os.environ, "BROKER_URL": broker_url, "PYTHONPATH": str(ROOT), **env}
    environment = {name: value for name, value in environment.items() if value is not None}
    log = tmp_path / "flower.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, *command, f"--port={port}", "--address=127.0.0.1"],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if process.poll() is not None:
            pytest.fail(f"flower exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually(healthy, timeout=30, interval=0.2, message="flower to answer")
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)


def test_our_flower_requires_its_basic_auth_for_metrics(broker_url, tmp_path):
    user, password = FLOWER_CREDENTIALS
    with flower(OURS, broker_url, tmp_path, FLOWER_BASIC_AUTH=f"{user}:{password}") as (url, process):
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", auth=(user, "wrong")).status_code == 401
        response = httpx.get(f"{url}/metrics", auth=(user, password))
        assert response.status_code == 200
        assert "flower_events_total" in response.text
        # Flower's registry has Flower's metrics only; ours are the web's.
        assert "marketplace_" not in response.text
        # The UI is protected as before, and the health check stays open for probes.
        assert httpx.get(f"{url}/workers").status_code == 401
        assert httpx.get(f"{url}/healthcheck").status_code == 200
        # Flower wrote nothing to the metrics directory the web adds up.
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert not list(directory.glob(f"*-{process.pid}.db"))


def test_our_flower_refuses_metrics_when_no_authentication_is_configured(broker_url, tmp_path):
    with flower(OURS, broker_url, tmp_path, FLOWER_BASIC_AUTH=None) as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 401


def test_plain_flower_serves_metrics_to_anyone(broker_url, tmp_path):
    """Why the wrapper exists. When this fails, Flower protects /metrics itself: drop the wrapper."""
    user, password = FLOWER_CREDENTIALS
    with flower(
        ["-m", "celery", "-A", "marketplace", "flower"],
        broker_url,
        tmp_path,
        FLOWER_BASIC_AUTH=f"{user}:{password}",
        PROMETHEUS_MULTIPROC_DIR=None,
    ) as (url, _):
        assert httpx.get(f"{url}/workers").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 200
