"""Controllable edges for tests: the email provider (a Django email backend) and attempt probes.

Worker processes and the test share a directory (FAULTS_DIR). A test breaks the email provider
by writing a control file; every send attempt and every task start is appended to a log there.

    email.fail     "N" fails the next N sends, "always" fails every send
    email.delay    seconds to wait before each send (to kill a worker mid-task)
    email.crash    a recipient: sending them an email kills the worker's process (a crash loop)
    email.log      one JSON line per accepted message
    tasks.log      one JSON line per task start (task name, id, retries, time)
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from django.core.mail.backends.base import BaseEmailBackend


def faults_dir() -> Path:
    return Path(os.environ["FAULTS_DIR"])


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_json(name: str, record: dict) -> None:
    path = faults_dir() / name
    with _locked(path), open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def read_json_lines(directory: Path, name: str) -> list[dict]:
    path = directory / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class EmailProviderDown(ConnectionError):
    """What the controlled provider raises when a test breaks it (an OSError: transient)."""


def _consume_failure() -> bool:
    path = faults_dir() / "email.fail"
    with _locked(path):
        if not path.exists():
            return False
        setting = path.read_text().strip()
        if setting == "always":
            return True
        remaining = int(setting or 0)
        if remaining <= 0:
            return False
        path.write_text(str(remaining - 1))
        return True


class ControlledEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages):
        delay = faults_dir() / "email.delay"
        if delay.exists():
            time.sleep(float(delay.read_text()))
        crash = faults_dir() / "email.crash"
        sent = 0
        for message in email_messages:
            if crash.exists() and crash.read_text() in message.to:
                os._exit(70)  # the process dies mid-task, as a segfaulting library would take it
            if _consume_failure():
                raise EmailProviderDown("email provider unavailable (test fault)")
            append_json(
                "email.log",
                {
                    "to": message.to,
                    "subject": message.subject,
                    "body": message.body,
                    "event_id": message.extra_headers.get("X-Marketplace-Event-Id"),
                    "pid": os.getpid(),
                },
            )
            sent += 1
        return sent


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
