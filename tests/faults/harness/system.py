"""The system under test: the Procfile's processes, each a separate OS process group.

The process list is read from the project's ``Procfile`` (Flower left out), so the ledger runs
whatever the deployment runs: web (gunicorn), relay, one Celery worker per subscriber and, once
the Procfile names it, the dead-letter recorder. If the Procfile does not list the recorder but
``manage.py record_dead_letters`` exists, it is started too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from marketplace.events import topology

ROOT = Path(__file__).resolve().parents[3]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
RECORDER_COMMAND = ".venv/bin/python manage.py record_dead_letters"
SKIPPED = {"flower"}
SUBSCRIBERS = tuple(subscriber.name for subscriber in topology.SUBSCRIBERS)

# The retry policy the ledger runs with: the production shape (5 retries, exponential backoff),
# with a lower cap so that a run ends in minutes: waits of 1, 2, 4, 8, 8 s.
RETRY_ENV = {
    "SUBSCRIBER_MAX_RETRIES": "5",
    "SUBSCRIBER_RETRY_BACKOFF": "1",
    "SUBSCRIBER_RETRY_BACKOFF_MAX": "8",
}


# Short heartbeats and database timeouts, so that a network partition of 30 s outlasts them and
# a partition row ends in about a minute (production defaults: .env.example).
TIMEOUT_ENV = {
    "BROKER_HEARTBEAT": "10",
    "DATABASE_CONNECT_TIMEOUT": "5",
    "DATABASE_KEEPALIVES_IDLE": "5",
    "DATABASE_KEEPALIVES_INTERVAL": "2",
    "DATABASE_KEEPALIVES_COUNT": "3",
    "DATABASE_TCP_USER_TIMEOUT_MS": "10000",
}


def read_procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    commands = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        if name.strip() not in SKIPPED:
            commands[name.strip()] = command.strip()
    return commands


def recorder_available() -> bool:
    return (ROOT / "marketplace/events/management/commands/record_dead_letters.py").exists()


@dataclass
class Proc:
    name: str
    command: str
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    log_offset: int = 0  # where this start's output begins in the (appended) log

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class System:
    def __init__(
        self, *, workdir: Path, database_url: str, broker_url: str, management_url: str, smtp_port: int, web_port: int
    ):
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(exist_ok=True)
        self.control_dir = workdir / "control"
        self.control_dir.mkdir(exist_ok=True)
        self.web_port = web_port
        self.procs: dict[str, Proc] = {}
        self.notes: list[str] = []
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DJANGO_", "DATABASE_", "BROKER_", "RABBITMQ_"))
            },
            "DJANGO_SETTINGS_MODULE": "tests.faults.harness.worker_settings",
            # Production settings, as deployed (a strong key of this run's own), except that the
            # load reaches the web over plain HTTP on 127.0.0.1, with no TLS-terminating proxy in
            # front to redirect to.
            "MARKETPLACE_ENV": "production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            # The ledger's seller webhook is a local plain-http server (edges.py).
            "SELLER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "RABBITMQ_MANAGEMENT_URL": management_url,
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp_port),
            "EMAIL_TIMEOUT": "5",
            "SELLER_WEBHOOK_TIMEOUT": "2",
            "WEB_PORT": str(web_port),
            "FAULT_LEDGER_CONTROL_DIR": str(self.control_dir),
            "LOG_LEVEL": "INFO",
            **RETRY_ENV,
            **TIMEOUT_ENV,
        }
        self.commands = read_procfile()
        if "recorder" not in self.commands:
            if recorder_available():
                self.commands["recorder"] = RECORDER_COMMAND
                self.notes.append("the Procfile has no recorder line yet; the harness started record_dead_letters")
            else:
                self.notes.append("manage.py record_dead_letters does not exist yet: no recorder process ran")

    # --- one-off commands -------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 300, check: bool = True, **extra_env: str):
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def prepare(self, *, buyers: int) -> dict:
        """Migrations, broker topology, demo data and the ledger's own buyers and webhook seller."""
        self.manage("migrate", "--no-input")
        self.manage("setup_broker")
        self.manage("seed_demo")
        return json.loads(
            self.manage("shell", "-c", _SEED.replace("BUYERS", str(buyers))).stdout.strip().splitlines()[-1]
        )

    # --- long-running processes ---------------------------------------------------------------

    @property
    def worker_names(self) -> list[str]:
        return [name for name in self.commands if name in SUBSCRIBERS]

    def start(self, name: str, *, command: str | None = None, wait: bool = True, env: dict | None = None) -> Proc:
        """Start ``name`` as its own process group; ``env`` overrides variables for this start only
        (a partition row points one process's BROKER_URL or DATABASE_URL at a proxy)."""
        command = command or self.commands.get(name) or self.commands[name.rstrip("0123456789")]
        old = self.procs.get(name)
        if old is not None and old.alive:
            raise RuntimeError(f"{name} is already running")
        proc = Proc(name, command, self.logdir / f"{name}.log")
        proc.log_offset = len(proc.log_text())
        log = open(proc.log_path, "a")  # noqa: SIM115 - handed to the child, closed below
        log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n")
        log.flush()
        proc.process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        proc.started_at = time.time()
        self.procs[name] = proc
        if wait:
            self.wait_ready(proc)
        return proc

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name, wait=False)
        for name in self.commands:
            self.wait_ready(self.procs[name])

    def wait_ready(self, proc: Proc, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        offset = proc.log_offset
        while time.monotonic() < deadline:
            if not proc.alive:
                if proc.name == "recorder":
                    self.notes.append(f"the recorder exited: {proc.log_text()[-300:]!r}")
                    return
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_text()[-3000:]}")
            if self._ready(proc, offset):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.log_text()[-3000:]}")

    def _ready(self, proc: Proc, offset: int) -> bool:
        if proc.name in SUBSCRIBERS:
            return "ready." in proc.log_text()[offset:]
        if proc.name == "web":
            try:
                return httpx.get(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1).status_code < 600
            except httpx.HTTPError:
                return False
        return time.time() - proc.started_at > 1.0  # relay, recorder: alive after a second

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group at once (gunicorn master and workers, Celery pool)."""
        proc = self.procs[name]
        if proc.alive:  # not reaped yet, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
        proc.process.wait(timeout=20)
        self._kill_leftovers(proc)

    def stop(self, name: str, timeout: float = 30) -> None:
        proc = self.procs.get(name)
        if proc is None or not proc.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGTERM)
        try:
            proc.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(name)
        self._kill_leftovers(proc)

    def _kill_leftovers(self, proc: Proc) -> None:
        """SIGKILL members of the group that outlived its leader (pool children). The leader is
        reaped, so its pid (the group id) may belong to someone else by now: only processes that
        carry this run's control directory in their environment are touched."""
        for pid in self._group(proc.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart_dead(self) -> list[str]:
        dead = [name for name, proc in self.procs.items() if name in self.commands and not proc.alive]
        for name in dead:
            if name == "recorder" and not recorder_available():
                continue
            self.start(name)
        return dead

    def pids(self, name: str) -> set[int]:
        """Every pid in the process group of ``name`` (a Celery worker's main process and pool)."""
        proc = self.procs.get(name)
        if proc is None or not proc.alive:
            return set()
        return self._group(proc.process.pid)

    def _group(self, pgid: int) -> set[int]:
        marker = f"FAULT_LEDGER_CONTROL_DIR={self.control_dir}".encode()
        pids = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[2]) == pgid and marker in (
                        entry / "environ"
                    ).read_bytes().split(b"\0"):
                        pids.add(int(entry.name))
        return pids

    def close(self, timeout: float = 10) -> None:
        """SIGTERM every process group at once, wait for them together, SIGKILL what is left."""
        alive = [proc for proc in self.procs.values() if proc.alive]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                if proc.alive:
                    os.killpg(proc.process.pid, signal.SIGKILL)
                    proc.process.wait(timeout=10)
                self._kill_leftovers(proc)


# Run with `manage.py shell -c` against the ledger's database: buyers with tokens, ample stock for
# the demo products, and the demo seller "Canvas Goods" notified by webhook (set by the harness).
_SEED = """
import json
from django.contrib.auth import get_user_model
from api_tokens.services import api_token_issue, api_token_revoke_all
from orders.models import Product, Seller
User = get_user_model()
buyers = []
for i in range(BUYERS):
    user, created = User.objects.get_or_create(
        username=f"ledger{i}", defaults={"email": f"ledger{i}@buyers.example", "last_name": str(i)}
    )
    api_token_revoke_all(user=user, name="ledger")
    token = api_token_issue(user=user, name="ledger").token
    buyers.append({"id": user.pk, "email": user.email, "token": token})
Product.objects.update(stock=1000000)
products = [{"id": p.pk, "seller": p.seller_id, "stock": p.stock} for p in Product.objects.order_by("id")]
sellers = [{"id": s.pk, "name": s.name, "email": s.email} for s in Seller.objects.order_by("id")]
print(json.dumps({"buyers": buyers, "products": products, "sellers": sellers}))
"""
