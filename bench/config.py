"""Names, ports and the run parameters of the benchmark (the full run and --quick).

Everything the harness starts talks to 127.0.0.1 only, on a database and a RabbitMQ vhost of its
own, so it never touches the development stack or the test suite's resources.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from marketplace.events import topology

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
PYTHON = str(VENV / "python")
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# What the benchmark loads the system with, and the subscribers that act on it: the pipeline,
# the floor's no-op twins, the drains and the baseline's inline downstreams are theirs. The full
# stack still runs every subscriber (the others acknowledge and skip these events).
EVENT_TYPE = "order.placed"
ORDER_SUBSCRIBERS = topology.subscribers_of(EVENT_TYPE)

# The floor's own fanout exchange and one queue per order subscriber (names derived from the
# topology module, so a new subscriber gets its no-op twin).
FLOOR_EXCHANGE = "bench.floor.events"
FLOOR_TASK = "bench.floor.noop"
# The exactly-once floor of a drain (bench/floor/marker.py): its task, and the subscriber name of its markers.
MARKER_TASK = "bench.floor.marker"
MARKER_SUBSCRIBER = "bench_marker"
# The recorder benchmark (bench/recorder.py): whose dead letters it records, the prefetch it
# assumes while the recorder names none, and the baseline's queue (bound to the dead-letter
# exchange like the recorder's) and table.
DEAD_LETTER_SUBSCRIBER = "seller_notification"
RECORDER_DEFAULT_PREFETCH = 100
DEAD_LETTER_FLOOR_QUEUE = "bench.floor.dead-letters"
DEAD_LETTER_FLOOR_TABLE = "bench_dead_letter"


def floor_queue_name(subscriber: topology.Subscriber) -> str:
    return f"bench.floor.{subscriber.name}"


@dataclass(frozen=True)
class Params:
    """How long and how hard each scenario runs."""

    connections: int = 16  # closed-loop clients (wrk -c), as in issue 8
    saturate_seconds: float = 20.0
    api_rounds: int = 3  # the API-alone comparison alternates its three systems this many times
    paced_seconds: float = 20.0
    ramp_seconds: float = 8.0
    ramp_fractions: tuple[float, ...] = (0.2, 0.4, 0.8, 1.0)  # plus the 60% window
    probe_steps: int = 4  # paced probes above the closed-loop estimate of the sustained rate
    probe_seconds: float = 10.0
    profile_seconds: float = 15.0
    drain_events: int = 10_000
    drain_timeout: float = 150.0
    recorder_events: int = 10_000  # dead letters per drain of the recorder and of its baseline
    recorder_reps: int = 3  # recorder and baseline drains, interleaved, each this many times (median ratio)
    recorder_broker_share: float = 0.1  # of the dead letters, those RabbitMQ dead-letters itself (x-death)
    recorder_timeout: float = 600.0
    settle_timeout: float = 90.0  # waiting for a backlog to drain between scenarios
    products: int = 1000
    buyers: int = 100
    lines_per_order: int = 3
    flower_runs: bool = True


FULL = Params()
QUICK = Params(
    saturate_seconds=3.0,
    api_rounds=1,
    paced_seconds=3.0,
    ramp_fractions=(),  # the plot gets the 60% point of each system only
    probe_steps=0,
    profile_seconds=0.0,
    drain_events=150,
    drain_timeout=20.0,
    recorder_events=1000,
    recorder_reps=1,
    recorder_timeout=60.0,
    settle_timeout=20.0,
    products=300,
    buyers=20,
)
TINY = replace(
    QUICK,
    connections=2,
    saturate_seconds=1.0,
    paced_seconds=1.0,
    ramp_fractions=(),
    profile_seconds=0.0,
    drain_events=20,
    drain_timeout=10.0,
    recorder_events=200,
    recorder_reps=2,
    recorder_timeout=60.0,
    settle_timeout=3.0,
    products=20,
    buyers=3,
    flower_runs=False,
)


@dataclass
class Target:
    """Where this run's stack lives: database, vhost, ports, log directory."""

    db_name: str = "marketplace_bench"
    vhost: str = "marketplace-bench"
    web_port: int = 8100  # the marketplace API
    floor_port: int = 8101  # floor, thin view and request-response baseline
    variant_port: int = 8102  # the marketplace API with its outbox + publish switched off
    stub_port: int = 8103  # the three downstreams of the baseline (and the broken seller webhook)
    logdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "marketplace-bench")
    drop_at_end: bool = False
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50), repr=False)

    @classmethod
    def named(cls, name: str, first_port: int) -> Target:
        """The stack of a benchmark of its own: database ``marketplace_bench_<name>``, vhost and log
        directory ``marketplace-bench-<name>``, and four ports from ``first_port`` (web, floor,
        variant, stub), so that no two of them share one."""
        slug = name.replace("_", "-")
        return cls(
            db_name=f"marketplace_bench_{name}",
            vhost=f"marketplace-bench-{slug}",
            web_port=first_port,
            floor_port=first_port + 1,
            variant_port=first_port + 2,
            stub_port=first_port + 3,
            logdir=Path(tempfile.gettempdir()) / f"marketplace-bench-{slug}",
        )

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:5432/{self.db_name}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"

    @property
    def broker_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            BROKER_URL=self.broker_url,
            BENCH_BROKER_URL=self.broker_url,
            RABBITMQ_MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672/api/",
            DJANGO_SETTINGS_MODULE="marketplace.settings",
            # Production settings, as deployed (a strong key of this run's own), except that the load
            # reaches the web over plain HTTP on 127.0.0.1, with no TLS-terminating proxy to redirect to.
            MARKETPLACE_ENV="production",
            DJANGO_SECRET_KEY=self.secret_key,
            DJANGO_SECURE_SSL_REDIRECT="false",
            SELLER_WEBHOOK_ALLOWED_HOSTS="127.0.0.1,localhost",  # the failing seller webhook is the local stub
            DJANGO_DEBUG="false",
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            # The load is a few buyers ordering as fast as they can: a limit no window reaches, so
            # every order still pays for its check (bench/rate_limits.py measures that check alone).
            API_RATE_LIMIT_ORDERS="100000000/minute",
            EMAIL_BACKEND="bench.mail.EmailBackend",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
            BENCH_DONE_DIR=str(self.logdir / "done"),
            BENCH_STUB_URL=f"http://127.0.0.1:{self.stub_port}",
        )
        env.update(overrides)
        return env
