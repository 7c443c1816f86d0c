"""Starting and stopping the stack's processes the way the Procfile does, and reading their cost.

Commands come from the Procfile itself (so the benchmark follows it when it changes), pointed at
the bench database, vhost and ports. Every process runs in its own process group; stopping one
sends SIGTERM to that group, then SIGKILL to whatever is left. Only groups started here are
signalled. CPU time and RSS come from /proc, summed over each process and its descendants.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

from bench.config import ORDER_SUBSCRIBERS, ROOT, Target, floor_queue_name
from marketplace.events import topology

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def procfile_argv(name: str, env: dict[str, str]) -> list[str]:
    """The Procfile's command for ``name``, with ${VAR:-default} expanded from ``env``."""
    command = re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), procfile()[name]
    )
    return shlex.split(command)


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


class Proc:
    """A child in its own session/process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.name = name
        self.argv = argv
        logdir.mkdir(parents=True, exist_ok=True)
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.popen.pid
        self.terminated = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """This process and its descendants (gunicorn workers, Celery pool children)."""
        found, todo = [], [self.pid]
        while todo and len(found) < 200:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        return [p for p in found if Path(f"/proc/{p}").exists()]

    def terminate(self) -> None:
        if self.alive() and not self.terminated:
            self.terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group (if not sent yet), wait, then SIGKILL whatever is left of it."""
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in {timeout:.0f}s: SIGKILL to its group")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # a pool child that outlived its leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._log.close()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime + stime, + cutime + cstime: children already reaped (a PostgreSQL backend that
            # disconnected, a recycled pool child) still count, in their parent.
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


def system_pids(comm: str) -> list[int]:
    """Shared services (RabbitMQ, PostgreSQL) by command name: read-only, never signalled."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    pids.append(int(entry))
    return pids


class Stack:
    """Every process the benchmark runs, by name; stop_all() is safe to call at any time."""

    def __init__(self, target: Target):
        self.target = target
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, argv: list[str], **env: str) -> Proc:
        self.stop(name)
        self.procs[name] = Proc(name, argv, self.target.env(**env), self.target.logdir)
        return self.procs[name]

    # web processes ---------------------------------------------------------------------------
    def start_web(
        self, name: str, port: int, *, wsgi: str = "marketplace.wsgi", settings: str = "", wait: bool = True
    ) -> Proc:
        env = {"WEB_PORT": str(port)} | ({"DJANGO_SETTINGS_MODULE": settings} if settings else {})
        argv = procfile_argv("web", self.target.env(**env))
        argv[argv.index("marketplace.wsgi")] = wsgi
        proc = self.start(name, argv, **env)
        if wait:
            wait_http(proc, port, "/api/products/?page_size=1")
        return proc

    def start_procfile(self, name: str, **env: str) -> Proc:
        return self.start(name, procfile_argv(name, self.target.env(**env)), **env)

    def start_workers(self, *, settings: str = "", only: tuple[topology.Subscriber, ...] = ()) -> None:
        """The Procfile's worker per subscriber (``only`` some), consuming once this returns."""
        env = {"DJANGO_SETTINGS_MODULE": settings} if settings else {}
        subs = only or topology.SUBSCRIBERS
        for sub in subs:
            argv = _replace(procfile_argv(sub.name, self.target.env(**env)), "-n", f"bench-{sub.name}@%h")
            self.start(sub.name, argv, **env)
        wait_consumers(self, [s.name for s in subs], [s.queue_name for s in subs])

    def start_floor_workers(
        self, *, only: tuple[topology.Subscriber, ...] = (), app: str = "bench.floor.noop", label: str = "floor"
    ) -> None:
        """A twin of each order subscriber's Procfile worker running ``app`` (by default the no-op
        one), on the floor's queue, named ``<label>-<subscriber>``."""
        subs = only or ORDER_SUBSCRIBERS
        for sub in subs:
            argv = procfile_argv(sub.name, self.target.env())
            argv = _replace(argv, "-A", app)
            argv = _replace(argv, "-Q", floor_queue_name(sub))
            argv = _replace(argv, "-n", f"{label}-{sub.name}@%h")
            self.start(f"{label}-{sub.name}", argv, BENCH_SUBSCRIBER=sub.name)
        wait_consumers(self, [f"{label}-{s.name}" for s in subs], [floor_queue_name(s) for s in subs])

    def stop(self, *names: str) -> None:
        """Stop these processes together: SIGTERM to every group first, then wait for each."""
        procs = [self.procs.pop(name) for name in names if name in self.procs]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop()

    def stop_workers(self) -> None:
        self.stop(*[s.name for s in topology.SUBSCRIBERS], *[f"floor-{s.name}" for s in ORDER_SUBSCRIBERS])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.terminate()
        for name in list(self.procs):
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {name}: {exc!r}")

    def check_alive(self) -> None:
        dead = [name for name, proc in self.procs.items() if not proc.alive()]
        if dead:
            raise RuntimeError(f"process(es) exited: {dead}; see {self.target.logdir}")

    # cost -------------------------------------------------------------------------------------
    def cpu_snapshot(self) -> dict[str, float]:
        snap = {name: cpu_seconds(proc.pids()) for name, proc in self.procs.items()}
        snap["rabbitmq (shared)"] = cpu_seconds(system_pids("beam.smp"))
        snap["postgres (shared)"] = cpu_seconds(system_pids("postgres"))
        return snap

    def rss(self) -> dict[str, float]:
        return {name: round(rss_mib(proc.pids()), 1) for name, proc in self.procs.items()}


def wait_http(proc: Proc, port: int, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {proc.log_path}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer on :{port} within {timeout:.0f}s")


def wait_consumers(stack: Stack, names: list[str], queues: list[str], timeout: float = 90.0) -> None:
    from bench.broker import consumers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in names:
            if not stack.procs[name].alive():
                raise RuntimeError(f"{name} exited; see {stack.procs[name].log_path}")
        if all(consumers(stack.target, q) >= 1 for q in queues):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{names} did not start consuming within {timeout:.0f}s")
