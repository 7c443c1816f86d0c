"""Servers the harness owns: a private PostgreSQL 15 cluster and a private RabbitMQ node.

Both listen on loopback only, on ports of their own, with data under the run's temp directory, so
stopping or breaking them never touches the shared servers on 5432 and 5672. A run leaves an
``owner.json`` in its directory; a later run sweeps up servers whose owner process is gone
(a run killed with SIGKILL cannot clean up after itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_VERSION = "15"
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
RUN_PREFIX = "mp-faults-"
SHARED_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise ServerError(f"{' '.join(cmd)} exited {result.returncode}: {(result.stderr or result.stdout)[-2000:]}")
    return result.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostgresCluster:
    """``pg_createcluster 15 <name>`` with trust auth on localhost, data in the run directory."""

    def __init__(self, workdir: Path, name: str, port: int):
        self.workdir = workdir
        self.name = name
        self.port = port
        self.datadir = workdir / "pgdata"
        self.logfile = workdir / "postgresql.log"
        self.created = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/marketplace"

    def create(self) -> None:
        shutil.chown(self.workdir, user="postgres")
        run(
            [
                "pg_createcluster",
                PG_VERSION,
                self.name,
                "-p",
                str(self.port),
                "-d",
                str(self.datadir),
                "-l",
                str(self.logfile),
                # listen_addresses stays at its default, 'localhost': loopback only.
                "-o",
                "fsync=off",
                "-o",
                "max_connections=200",
                "--",
                "--auth=trust",
            ]
        )
        self.created = True
        self.start()
        run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE marketplace"])

    def start(self) -> None:
        run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, self.name, "start"], timeout=60)

    def stop(self) -> None:
        run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, self.name, "stop", "-m", "fast"], timeout=60)

    def destroy(self) -> None:
        if self.created:
            drop_cluster(self.name)
            self.created = False


def drop_cluster(name: str) -> None:
    run(["pg_dropcluster", "--stop", PG_VERSION, name], check=False, timeout=60)


class RabbitNode:
    """A RabbitMQ node of the run's own: its own node name, ports, mnesia and log directories.

    It runs as root with HOME in the run directory, holding a copy of the shared node's Erlang
    cookie, so ``rabbitmqctl -n <node>`` works the same way for it as for the shared node.
    """

    def __init__(self, workdir: Path, nodename: str, port: int, dist_port: int, management_port: int = 0):
        self.workdir = workdir / "rabbitmq"
        self.nodename = nodename
        self.port = port
        self.dist_port = dist_port
        self.management_port = management_port
        self.started = False

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}/api/"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        w = self.workdir
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(w / "home"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_PID_FILE": str(w / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            # Not /etc/rabbitmq/rabbitmq-env.conf: that one names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        w = self.workdir
        for sub in ("home", "mnesia", "log"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        cookie = w / "home" / ".erlang.cookie"
        shutil.copyfile(SHARED_COOKIE, cookie)
        cookie.chmod(0o400)
        (w / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        )
        # The management API: the relay reads queue bindings from it (topology_check.py).
        (w / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (w / "rabbitmq-env.conf").write_text("")
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
            env=self.env(),
            check=True,
            timeout=30,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started = True
        self.await_startup()

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        return run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args], env=self.env(), timeout=timeout, check=check
        )

    def await_startup(self, timeout: int = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl("await_startup", "--timeout", "30", timeout=40)
                return
            except (ServerError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app", timeout=120)
        self.await_startup()

    def shutdown(self) -> None:
        """End the node. Its data is thrown away with the run directory, so there is nothing to
        flush: SIGKILL by the pid it wrote (a clean `rabbitmqctl shutdown` takes ~9 s)."""
        pid_file = self.workdir / "rabbit.pid"
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
        if pid is not None and _pid_alive(pid) and _is_our_node(pid, self.workdir):
            os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        elif self.started:
            self.ctl("shutdown", timeout=60, check=False)
        self.started = False


def _is_our_node(pid: int, workdir: Path) -> bool:
    """The process was started with this node's mnesia directory in its environment."""
    try:
        return f"RABBITMQ_MNESIA_BASE={workdir / 'mnesia'}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


class Servers:
    """The run directory, the PostgreSQL cluster and the RabbitMQ node, torn down together."""

    def __init__(self):
        sweep_stale_runs()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
        self.workdir.chmod(0o755)
        tag = f"{os.getpid()}"
        self.postgres = PostgresCluster(self.workdir, f"mpfaults{tag}", free_port())
        self.rabbit = RabbitNode(self.workdir, f"rabbit-faults-{tag}@localhost", free_port(), free_port(), free_port())
        (self.workdir / "owner.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "pg_cluster": self.postgres.name,
                    "rabbit_node": self.rabbit.nodename,
                    "rabbit_home": str(self.rabbit.workdir),
                }
            )
        )

    def start(self) -> None:
        self.postgres.create()
        self.rabbit.start()

    def close(self) -> None:
        errors = []
        for step in (self.rabbit.shutdown, self.postgres.destroy):
            try:
                step()
            except Exception as exc:  # keep tearing down the rest
                errors.append(exc)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise ServerError(f"teardown errors: {errors}")


def sweep_stale_runs() -> None:
    """Tear down what runs that died without cleaning up left behind (their owner pid is gone)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*"):
        owner_file = directory / "owner.json"
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(owner["pid"])):
            continue
        kill_processes_of(directory)
        node = RabbitNode(directory, owner["rabbit_node"], 0, 0)
        node.workdir = Path(owner["rabbit_home"])
        node.started = True
        with contextlib.suppress(Exception):
            node.shutdown()
        drop_cluster(owner["pg_cluster"])
        shutil.rmtree(directory, ignore_errors=True)


def kill_processes_of(directory: Path) -> None:
    """SIGKILL the processes a run started (they carry its control directory in their environment)."""
    marker = f"FAULT_LEDGER_CONTROL_DIR={directory / 'control'}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), 9)


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    """Debian's ``pgbouncer`` in transaction pooling mode, in front of a PostgreSQL of the run.

    It listens on 127.0.0.1 on a port of its own, serves the one database ``marketplace`` (trust
    auth, like the cluster behind it) and runs as ``postgres`` (pgbouncer refuses to run as root).
    It carries the run's control directory in its environment, so a later run's sweep ends it if
    this one was killed. The admin console (``admin``) answers SHOW POOLS / SHOW CLIENTS.
    """

    def __init__(
        self,
        workdir: Path,
        port: int,
        server_port: int,
        *,
        control_dir: Path,
        pool_size: int = 20,
        dbname: str = "marketplace",
    ):
        self.workdir = workdir / "pgbouncer"
        self.port = port
        self.server_port = server_port
        self.dbname = dbname
        self.pool_size = pool_size
        self.control_dir = control_dir
        self.logfile = self.workdir / "pgbouncer.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/marketplace"

    def start(self) -> None:
        if not os.access(PGBOUNCER, os.X_OK):
            raise ServerError(f"{PGBOUNCER} not found: apt-get install pgbouncer")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "userlist.txt").write_text('"postgres" ""\n')
        (self.workdir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"marketplace = host=127.0.0.1 port={self.server_port} dbname={self.dbname}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.workdir}\n"
            "auth_type = trust\n"
            f"auth_file = {self.workdir / 'userlist.txt'}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            # A server that is down: new logins are tried again after 1 s, not the default 15 s.
            "server_login_retry = 1\n"
            f"logfile = {self.logfile}\n"
        )
        shutil.chown(self.workdir, user="postgres")
        for path in self.workdir.iterdir():
            shutil.chown(path, user="postgres")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FAULT_LEDGER_CONTROL_DIR": str(self.control_dir)}
        self.process = subprocess.Popen(
            [PGBOUNCER, "-u", "postgres", str(self.workdir / "pgbouncer.ini")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"pgbouncer exited {self.process.returncode}: {self.log_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise ServerError(f"pgbouncer not listening on {self.port}: {self.log_text()[-2000:]}")

    def admin(self, command: str) -> list[dict[str, str]]:
        """A SHOW command on the admin console, as rows of column -> value."""
        out = run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-AF",
                "\t",
                "-c",
                command,
                "pgbouncer",
            ],
            timeout=20,
        )
        lines = [line for line in out.splitlines() if line and not line.startswith("(")]
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
