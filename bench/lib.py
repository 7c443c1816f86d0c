"""Benchmark plumbing: an isolated stack (own database, own vhost, own ports), process control,
a small threaded HTTP load generator, a black-holed "broker", statistics and /proc readings.

Everything here talks to 127.0.0.1 only. Every process is started in its own process group and
stopped by that group's id; every loop is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
PYTHON = str(VENV / "python")
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"

DB_NAME = "marketplace_bench"
VHOST = "marketplace-bench"
WEB_PORT = 8100
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_DSN = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
GOOD_BROKER = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
REFUSED_BROKER = "amqp://guest:guest@127.0.0.1:1/"
SUBSCRIBERS = ("order_confirmation", "seller_notification", "customer_segmentation")


def bench_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        BROKER_URL=GOOD_BROKER,
        DJANGO_DEBUG="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- processes -----------------------------------------------------------------------------


class Proc:
    """A child process in its own session/process group; stop() signals that group only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pgid {self.pid}) did not stop in {timeout}s: SIGKILL to its group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        # Children that outlived the leader (e.g. a Celery pool child) share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120, check: bool = True):
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def manage(*args: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True):
    return run([PYTHON, "manage.py", *args], env=env or bench_env(), timeout=timeout, check=check)


def rabbitmqctl(*args: str, check: bool = True) -> str:
    return run([RABBITMQCTL, *args], timeout=120, check=check).stdout


class Stack:
    """The benchmark's own web, relay and workers; tracks every process it starts."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[str, Proc] = {}

    # web ------------------------------------------------------------------------------------
    def start_web(self, broker_url: str = GOOD_BROKER, **env: str) -> Proc:
        self.stop("web")
        argv = [
            str(VENV / "gunicorn"), "marketplace.wsgi",
            "--bind", f"127.0.0.1:{WEB_PORT}", "--workers", "2", "--threads", "4", "--timeout", "30",
        ]  # fmt: skip
        proc = self.procs["web"] = Proc("web", argv, bench_env(BROKER_URL=broker_url, **env), self.logdir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"gunicorn exited, see {proc.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=5)
                conn.request("GET", "/api/products/?page_size=1")  # no broker involved
                if conn.getresponse().status == 200 and len(self.web_worker_pids()) == 2:
                    conn.close()
                    return proc
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("gunicorn did not become ready in 60s")

    def web_worker_pids(self) -> list[int]:
        proc = self.procs.get("web")
        return children(proc.pid) if proc else []

    # relay ----------------------------------------------------------------------------------
    def start_relay(self, broker_url: str = GOOD_BROKER, name: str = "relay") -> Proc:
        self.stop(name)
        argv = [PYTHON, "manage.py", "relay_outbox"]
        proc = self.procs[name] = Proc(name, argv, bench_env(BROKER_URL=broker_url), self.logdir)
        return proc

    # workers --------------------------------------------------------------------------------
    def start_workers(self) -> None:
        for sub in SUBSCRIBERS:
            self.stop(sub)
            argv = [
                str(VENV / "celery"), "-A", "marketplace", "worker", "-Q", f"marketplace.{sub}",
                "-n", f"bench-{sub}@%h", "--concurrency", "2", "--loglevel", "WARNING",
            ]  # fmt: skip
            self.procs[sub] = Proc(sub, argv, bench_env(), self.logdir)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for sub in SUBSCRIBERS:
                if not self.procs[sub].alive():
                    raise RuntimeError(f"worker {sub} exited, see {self.procs[sub].log_path}")
            if all(c >= 1 for c in queue_consumers().values()):
                return
            time.sleep(0.5)
        raise RuntimeError("workers did not start consuming in 90s")

    def stop_workers(self) -> None:
        for sub in SUBSCRIBERS:
            self.stop(sub)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {name}: {exc!r}")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


# --- CPU accounting ------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    total = sum(values)
    idle = values[3] + values[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def rabbit_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def cpu_snapshot(stack: Stack) -> dict:
    comps: dict[str, list[int]] = {}
    if "web" in stack.procs:
        comps["web (gunicorn)"] = [stack.procs["web"].pid, *stack.web_worker_pids()]
    if "relay" in stack.procs:
        comps["relay"] = [stack.procs["relay"].pid]
    for sub in SUBSCRIBERS:
        if sub in stack.procs:
            comps[f"worker {sub}"] = [stack.procs[sub].pid, *children(stack.procs[sub].pid)]
    try:
        with db() as conn:
            comps["postgres (bench db backends)"] = [
                r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [DB_NAME]
                ).fetchall()
            ]  # fmt: skip
    except Exception:
        comps["postgres (bench db backends)"] = []
    comps["rabbitmq (shared node)"] = rabbit_pids()
    comps["bench client"] = [os.getpid()]
    snap = {name: {pid: proc_cpu_s(pid) for pid in pids} for name, pids in comps.items()}
    snap["_machine"] = machine_cpu_s()
    snap["_t"] = time.monotonic()
    return snap


def cpu_delta(before: dict, after: dict) -> dict:
    out = {}
    for name, pids in after.items():
        if name.startswith("_"):
            continue
        total = 0.0
        for pid, cpu in pids.items():
            if cpu is None:
                continue
            prev = before.get(name, {}).get(pid)
            total += cpu - (prev or 0.0)
        out[name] = round(total, 2)
    busy = after["_machine"][0] - before["_machine"][0]
    capacity = after["_machine"][1] - before["_machine"][1]
    ours = sum(out.values())
    out["_machine_busy_s"] = round(busy, 2)
    out["_machine_capacity_s"] = round(capacity, 2)
    out["_other_processes_s"] = round(max(0.0, busy - ours), 2)
    out["_wall_s"] = round(after["_t"] - before["_t"], 2)
    return out


# --- isolation: database and vhost ------------------------------------------------------------


def wait_for_rabbit(timeout: float = 240) -> None:
    """Other people's test suites stop and start the RabbitMQ app; wait for it to be running."""
    deadline = time.monotonic() + timeout
    while True:
        result = run([RABBITMQCTL, "list_vhosts", "--quiet", "--no-table-headers"], timeout=60, check=False)
        if result.returncode == 0 and broker_port_open():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ app not running for {timeout}s: {result.stderr[:200]}")
        log("RabbitMQ app is not running (someone's test stopped it?); waiting")
        time.sleep(3)


def broker_port_open() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


class BrokerWatch:
    """Records when the shared RabbitMQ stops listening (others' tests run `rabbitmqctl stop_app`)."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.down: list[list[float]] = []  # [start, end] in time.time(); end None while down
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            up = broker_port_open()
            now = time.time()
            if not up and (not self.down or self.down[-1][1] is not None):
                self.down.append([now, None])
            elif up and self.down and self.down[-1][1] is None:
                self.down[-1][1] = now

    def down_seconds(self, t0: float, t1: float) -> float:
        total = 0.0
        for start, end in self.down:
            end = time.time() if end is None else end
            total += max(0.0, min(end, t1) - max(start, t0))
        return round(total, 1)

    def close(self):
        self._stop.set()
        self._thread.join(2)


def create_isolated_env() -> None:
    wait_for_rabbit()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    if VHOST in rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers").split():
        rabbitmqctl("delete_vhost", VHOST)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")


def drop_isolated_env() -> None:
    try:
        wait_for_rabbit(120)
    except Exception as exc:
        log(repr(exc))
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    except Exception as exc:
        log(f"could not drop {DB_NAME}: {exc!r}")
    try:
        if VHOST in rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers").split():
            rabbitmqctl("delete_vhost", VHOST)
    except Exception as exc:
        log(f"could not delete vhost {VHOST}: {exc!r}")


def db() -> psycopg.Connection:
    return psycopg.connect(DB_DSN, autocommit=True)


def scalar(sql: str, params=None):
    with db() as conn:
        return conn.execute(sql, params).fetchone()[0]


def queue_stats() -> dict[str, tuple[int, int]]:
    """(ready messages, consumers) per subscriber queue, read with passive declares."""
    out = {}
    with Connection(GOOD_BROKER, connect_timeout=5) as conn:
        channel = conn.channel()
        for sub in SUBSCRIBERS:
            _, ready, consumers = channel.queue_declare(queue=f"marketplace.{sub}", passive=True)
            out[sub] = (ready, consumers)
    return out


def queue_consumers() -> dict[str, int]:
    try:
        return {k: v[1] for k, v in queue_stats().items()}
    except Exception:
        return {sub: 0 for sub in SUBSCRIBERS}


def purge_queues() -> None:
    with Connection(GOOD_BROKER, connect_timeout=5) as conn:
        channel = conn.channel()
        for sub in SUBSCRIBERS:
            channel.queue_purge(f"marketplace.{sub}")


def pending_outbox() -> int:
    return scalar("SELECT count(*) FROM events_outboxevent WHERE published_at IS NULL")


def outbox_lag() -> float:
    """The same number /healthz reports: age of the oldest unpublished row."""
    return scalar(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float "
        "FROM events_outboxevent WHERE published_at IS NULL"
    )


def processed_counts() -> dict[str, int]:
    with db() as conn:
        rows = conn.execute("SELECT subscriber, count(*) FROM events_processedevent GROUP BY subscriber").fetchall()
    counts = dict(rows)
    return {sub: counts.get(sub, 0) for sub in SUBSCRIBERS}


def wait_until(check, timeout: float, interval: float = 0.25):
    """Poll check() until truthy or timeout; returns (result, seconds waited)."""
    start = time.monotonic()
    while True:
        result = check()
        if result or time.monotonic() - start > timeout:
            return result, time.monotonic() - start
        time.sleep(interval)


def unhandled_events() -> int:
    """Published events that at least one subscriber has not handled yet (ProcessedEvent rows)."""
    return scalar(
        """
        SELECT count(*) FROM events_outboxevent o CROSS JOIN unnest(%s::text[]) AS s(subscriber)
        WHERE o.published_at IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM events_processedevent p WHERE p.subscriber = s.subscriber AND p.event_id = o.event_id)
        """,
        [list(SUBSCRIBERS)],
    )


def wait_subscribers_done(timeout: float) -> tuple[bool, float]:
    """The outbox is empty and every published event was handled by all three subscribers."""

    def done():
        return pending_outbox() == 0 and unhandled_events() == 0

    ok, waited = wait_until(done, timeout, 0.5)
    return bool(ok), waited


def failure_summary() -> dict:
    with db() as conn:
        failed = conn.execute(
            "SELECT subscriber, exception_class, count(*) FROM events_failedevent GROUP BY 1, 2"
        ).fetchall()
        retried = conn.execute(
            "SELECT count(*) FROM events_outboxevent WHERE attempts > 1 OR last_error <> ''"
        ).fetchone()[0]
    return {"failed_events": [list(r) for r in failed], "outbox_rows_with_errors_or_retries": retried}


# --- black-holed broker -------------------------------------------------------------------------


class BlackHole:
    """Accepts TCP connections on a local port and never sends a byte (a hung broker)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _serve(self):
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(conn)  # read nothing, answer nothing

    def close(self):
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self.sock.close()


# --- load generator -----------------------------------------------------------------------------


@dataclass
class Sample:
    started: float  # time.time() when the request was sent
    latency: float  # seconds, send to full response read
    status: int  # HTTP status, or 0 for a transport error
    order_id: int | None = None
    error: str = ""


@dataclass
class LoadResult:
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0
    client_cpu: float = 0.0
    retried: int = 0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 201]

    def summary(self) -> dict:
        lat = sorted(s.latency * 1000 for s in self.samples)
        statuses: dict[str, int] = {}
        for s in self.samples:
            statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
        return {
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "statuses": statuses,
            "throughput_rps": round(len(self.ok) / self.wall, 1) if self.wall else 0.0,
            "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95),
            "p99_ms": pct(lat, 99),
            "max_ms": round(lat[-1], 1) if lat else None,
            "mean_ms": round(sum(lat) / len(lat), 1) if lat else None,
            "over_1s": sum(1 for v in lat if v > 1000),
            "wall_s": round(self.wall, 2),
            "client_cpu_s": round(self.client_cpu, 2),
            "client_retries": self.retried,
        }


def pct(sorted_values: list[float], p: float) -> float | None:
    """Percentile with linear interpolation between closest ranks."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    value = sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
    return round(value, 1)


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 1)


def order_body(lines: list[tuple[int, int]]) -> bytes:
    return json.dumps({"lines": [{"product": p, "quantity": q} for p, q in lines]}).encode()


def post_orders(
    *,
    tokens: list[str],
    make_lines,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    request_timeout: float = 30.0,
    interval: float = 0.0,
) -> LoadResult:
    """Closed-loop load: ``concurrency`` threads, each with its own keep-alive connection and its
    own buyer token, POST orders until ``max_requests`` were sent or ``max_seconds`` passed.
    With ``interval``, each thread starts a request at most every ``interval`` seconds (paced)."""
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds
    result = LoadResult(concurrency=concurrency)
    lock = threading.Lock()
    cpu0 = time.process_time()

    def worker(index: int):
        token = tokens[index % len(tokens)]
        conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=request_timeout)
        local: list[Sample] = []
        retried = 0
        rng = random.Random(index * 7919 + int(time.time()))
        next_start = time.monotonic()
        while time.monotonic() < deadline and next(counter) < max_requests:
            if interval:
                time.sleep(max(0.0, next_start - time.monotonic()))
                next_start = max(next_start + interval, time.monotonic() - interval)
            body = order_body(make_lines(rng))
            headers = {
                "Authorization": f"Token {token}",
                "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4()),
            }
            started_wall = time.time()
            t0 = time.perf_counter()
            status, order_id, error = 0, None, ""
            for attempt in (1, 2):  # one retry, same Idempotency-Key, only for a dropped keep-alive
                try:
                    conn.request("POST", "/api/orders/", body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    status = response.status
                    if status == 201:
                        order_id = json.loads(payload)["id"]
                    else:
                        error = payload[:300].decode(errors="replace")
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    conn.close()
                    if attempt == 2:
                        error = repr(exc)
                    else:
                        retried += 1
                except Exception as exc:  # timeouts etc.: record and reconnect
                    conn.close()
                    error = repr(exc)
                    break
            local.append(Sample(started_wall, time.perf_counter() - t0, status, order_id, error))
        conn.close()
        with lock:
            result.samples.extend(local)
            result.retried += retried

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + request_timeout + 10)
    result.wall = time.perf_counter() - t0
    result.client_cpu = time.process_time() - cpu0
    result.samples.sort(key=lambda s: s.started)
    return result


# --- machine ------------------------------------------------------------------------------------


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[:3].__str__()


def machine_info() -> dict:
    info = {
        "nproc": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "mem_total_mib": int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
        // 1024,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
    }
    try:
        info["postgresql"] = scalar("SHOW server_version")
    except Exception:
        with psycopg.connect(PG_ADMIN_DSN) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    status = rabbitmqctl("status", check=False)
    for line in status.splitlines():
        if line.startswith("RabbitMQ version:"):
            info["rabbitmq"] = line.split(":", 1)[1].strip()
        if line.startswith("Erlang configuration:"):
            info["erlang"] = line.split(":", 1)[1].strip().split(" [")[0]
    versions = run(
        [PYTHON, "-c", "import django, celery, kombu, gunicorn, rest_framework, psycopg;"
         "print(django.__version__, celery.__version__, kombu.__version__, gunicorn.__version__,"
         " rest_framework.__version__, psycopg.__version__)"],
    ).stdout.split()  # fmt: skip
    info.update(zip(("django", "celery", "kombu", "gunicorn", "drf", "psycopg"), versions, strict=False))
    return info
