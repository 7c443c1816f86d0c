"""One limit, many askers at once: the count in PostgreSQL lets exactly the limit through, whether
the checks come from threads with connections of their own or from separate web processes."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from marketplace.ratelimits import counters
from marketplace.ratelimits.models import RateLimitCounter
from marketplace.ratelimits.rates import Rate
from orders.models import Order
from tests.factories import BuyerFactory, ProductFactory, token_for
from tests.support.orders import run_concurrently
from tests.support.workers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

HOUR = 3600


def test_concurrent_checks_on_separate_connections_let_exactly_the_limit_through():
    rate = Rate(requests=25, seconds=HOUR)

    verdicts = run_concurrently(
        [lambda: [counters.count(scope="test", client="one", rate=rate) for _ in range(5)] for _ in range(20)]
    )

    allowed = Counter(verdict.allowed for thread in verdicts for verdict in thread)
    assert allowed == {True: 25, False: 75}
    assert RateLimitCounter.objects.get(scope="test", client="one").hits == 100


def run_web_processes(worker_env, tmp_path, *args: str, processes: int = 2) -> list[list]:
    """Start ``processes`` stand-in web processes (tests/ratelimits/web_process.py), release them at
    once, and return what each was answered."""
    go = tmp_path / "go"
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ratelimits.web_process", *args, str(go)],
            cwd=ROOT,
            env=worker_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for process in started:
            assert process.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [process.communicate(timeout=120)[0] for process in started]
    finally:
        for process in started:
            process.kill()
    return [json.loads(output.splitlines()[-1]) for output in outputs]


def test_two_web_processes_share_one_order_limit(worker_env, tmp_path):
    buyer = BuyerFactory()
    product = ProductFactory(stock=1000)
    per_thread, threads, limit = 6, 3, 7

    answered = run_web_processes(
        worker_env,
        tmp_path,
        "orders",
        f"{token_for(buyer)}:{product.pk}",
        str(per_thread),
        str(threads),
        f"{limit}/hour",
    )

    statuses = Counter(status for process in answered for status in process)
    assert statuses == {201: limit, 429: 2 * threads * per_thread - limit}
    assert Order.objects.filter(buyer=buyer).count() == limit


def test_checks_racing_from_two_processes_let_exactly_the_limit_through(worker_env, tmp_path):
    per_thread, threads, limit = 150, 4, 500

    answered = run_web_processes(
        worker_env, tmp_path, "checks", "racer", str(per_thread), str(threads), f"{limit}/hour"
    )

    allowed = Counter(verdict for process in answered for verdict in process)
    assert allowed == {True: limit, False: 2 * threads * per_thread - limit}
    assert all(True in process for process in answered), "one process finished before the other began"
