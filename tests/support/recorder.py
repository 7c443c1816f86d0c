"""A real dead-letter recorder process (``manage.py record_dead_letters``) for the tests, and
what the live tests read of it: whether it is alive, and whether its log shows it looping."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from marketplace.events import topology
from tests.support.workers import ROOT, stop_process_group

# A reader that takes one message for a lost broker (or a refused record for a database outage)
# logs one of these per attempt: seen again and again, it loops on that message.
LOOPING = re.compile(r"reconnecting|lost the broker|cannot record a dead letter|Connection to broker lost", re.I)


class RecorderProcess:
    """``manage.py record_dead_letters`` in its own process group, with the workers' environment."""

    def __init__(self, env: dict[str, str], log_dir: Path, broker_url: str):
        self.env = env
        self.broker_url = broker_url
        self.log_path = log_dir / f"recorder-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> RecorderProcess:
        self.log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            # --skip-checks: as the workers skip them (CELERY_SKIP_CHECKS, tests/conftest.py).
            [sys.executable, "manage.py", "record_dead_letters", "--skip-checks"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_consuming()
        return self

    def _wait_until_consuming(self, timeout: float = 60.0) -> None:
        """Until the recorder consumes its inbox (basic.consume). A recorder that polls with
        basic.get never shows as a consumer: then it counts as ready after a few seconds alive."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the recorder exited:\n{self.log_text()[-3000:]}")
            if self.inbox_consumers() >= 1 or time.monotonic() - started > 5:
                return
            time.sleep(0.2)
        pytest.fail(f"the recorder did not start consuming within {timeout:.0f}s:\n{self.log_text()[-3000:]}")

    def inbox_consumers(self) -> int:
        try:
            with Connection(self.broker_url) as conn:
                return conn.default_channel.queue_declare(topology.RECORDER_QUEUE_NAME, passive=True).consumer_count
        except Exception:
            return 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if stop_process_group(self.process):
            self.log.close()


def looping_lines(text: str) -> list[str]:
    """Lines of a log that say its process took a message for an outage."""
    return [line for line in text.splitlines() if LOOPING.search(line)]
