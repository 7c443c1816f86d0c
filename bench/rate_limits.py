"""``python -m bench.rate_limits [--rounds N] [--requests M] [--write]``: what the rate limits cost.

The API's whole request stack (middleware, authentication, throttles, view, on-commit publish)
through Django's test client, in this one process, against a database and a vhost of its own with
production settings (bench/config.py), one request at a time. The limits are either on, set so high
that nothing is refused (every request pays for its checks and nothing else changes), or off (no
rate configured: the throttles return before any SQL). The two alternate round by round (on, off,
off, on, ...), M requests of each kind per round; times are the median of their mode's rounds,
and the ratio (on / off) the median of the ratios of adjacent rounds. Time is wall time per request (PostgreSQL's share included, as a client
waits for it) and CPU per request: this process plus every PostgreSQL backend of the database.
Then the checks' statements alone, timed in a loop.

--write puts the result into docs/benchmarks.md as its own section (replaced in place on the next
run, added at the end the first time), and its raw numbers into bench/results/rate_limits.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import broker, data
from bench.config import ROOT, TINY, Target
from bench.processes import cpu_seconds, log
from bench.report import RATE_LIMITS_HEADING as HEADING
from bench.report import replace_section

TARGET = Target(db_name="marketplace_bench_rate_limits", vhost="marketplace-bench-rate-limits")
# High enough that no round of this benchmark reaches them: "on" measures counting, never refusing.
UNREACHABLE = "100000000/minute"
REPORT = ROOT / "docs" / "benchmarks.md"
RAW = ROOT / "bench" / "results" / "rate_limits.json"


@dataclass(frozen=True)
class Kind:
    name: str
    checks: str  # what the limits add to it
    send: Callable[[], object]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rate_limits", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16, help="rounds per mode (default 16)")
    parser.add_argument("--requests", type=int, default=100, help="requests of each kind per round (default 100)")
    parser.add_argument("--write", action="store_true", help=f"put the section into {REPORT.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    log(f"database {TARGET.db_name}, vhost {TARGET.vhost}: migrating and seeding")
    broker.create_vhost(TARGET)
    workload = data.prepare(TARGET, TINY)
    os.environ.update(
        TARGET.env(DATABASE_CONN_MAX_AGE="3600", LOG_LEVEL="ERROR", API_RATE_LIMIT_UNAUTHENTICATED=UNREACHABLE)
    )
    import django

    django.setup()
    logging.getLogger("django.request").setLevel(logging.ERROR)  # a line per 401 otherwise
    results = measure(workload, rounds=args.rounds, requests=args.requests)
    section = markdown(results)
    print(section)
    if args.write:
        replace_section(REPORT, HEADING, section)
        RAW.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {REPORT} and {RAW}")
    return 0


def measure(workload, *, rounds: int, requests: int) -> dict:
    from django.conf import settings
    from django.test import Client, override_settings

    from marketplace.ratelimits import counters
    from marketplace.ratelimits.models import RateLimitCounter
    from marketplace.ratelimits.rates import parse_rate
    from marketplace.ratelimits.throttles import ORDERS, UNAUTHENTICATED

    RateLimitCounter.objects.all().delete()  # a previous run's counts, maybe in this very window
    token, product = workload.tokens[0], workload.products[0]
    buyer = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Token {token}")
    anonymous = Client(HTTP_HOST="localhost")
    guesser = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION="Token " + "0" * 64)
    order = json.dumps({"lines": [{"product": product, "quantity": 1}]})
    placed = buyer.post("/api/orders/", order, content_type="application/json")
    assert placed.status_code == 201, placed.content
    order_url = f"/api/orders/{placed.json()['id']}/"
    kinds = [
        Kind(
            "place an order (token)",
            "address read + buyer count",
            lambda: buyer.post("/api/orders/", order, content_type="application/json"),
        ),
        Kind("read an order (token)", "address read", lambda: buyer.get(order_url)),
        Kind("list products (no token)", "address count", lambda: anonymous.get("/api/products/")),
        Kind("wrong token (401)", "address count", lambda: guesser.get("/api/orders/")),
    ]
    expected = {kinds[0].name: 201, kinds[1].name: 200, kinds[2].name: 200, kinds[3].name: 401}
    modes = {
        "on": {ORDERS: UNREACHABLE, UNAUTHENTICATED: UNREACHABLE},
        "off": {},
    }

    def run_round(mode: str, n: int) -> dict[str, dict[str, float]]:
        rates = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": modes[mode]}
        measured = {}
        with override_settings(REST_FRAMEWORK=rates):
            for kind in kinds:
                backends = database_backends()
                cpu, database_cpu, started = time.process_time(), cpu_seconds(backends), time.perf_counter()
                for _ in range(n):
                    response = kind.send()
                    assert response.status_code == expected[kind.name], (kind.name, mode, response.content[:300])
                wall = time.perf_counter() - started
                measured[kind.name] = {
                    "wall_ms": wall / n * 1000,
                    "cpu_ms": (time.process_time() - cpu + cpu_seconds(backends) - database_cpu) / n * 1000,
                }
        return measured

    for mode in modes:  # warm-up: connections, caches, the first rows
        run_round(mode, 30)
    log(f"{rounds} rounds per mode, {requests} requests of each kind per round")
    per_mode: dict[str, list[dict[str, dict[str, float]]]] = {"on": [], "off": []}
    for index in range(rounds * 2):
        mode = ("on", "off", "off", "on")[index % 4]
        per_mode[mode].append(run_round(mode, requests))
        log(f"round {index + 1}/{rounds * 2} ({mode}) done")

    rate = parse_rate(UNREACHABLE)
    statements = {}
    for name, check in [
        ("count (INSERT ... ON CONFLICT DO UPDATE)", lambda: counters.count(scope="bench", client="one", rate=rate)),
        ("read (SELECT by primary key)", lambda: counters.refused_in_window(scope="bench", client="one", rate=rate)),
    ]:
        n = requests * 10
        started = time.perf_counter()
        for _ in range(n):
            check()
        statements[name] = (time.perf_counter() - started) / n * 1_000_000

    # The k-th "on" round and the k-th "off" round ran next to each other (on, off, off, on, ...):
    # a ratio per such pair cancels what drifts over the run, and the median of them is reported.
    pairs = list(zip(per_mode["on"], per_mode["off"], strict=True))
    rows = []
    for kind in kinds:
        row = {"kind": kind.name, "checks": kind.checks}
        for metric in ("wall_ms", "cpu_ms"):
            row[metric] = {
                "on": round(statistics.median(on[kind.name][metric] for on, _ in pairs), 3),
                "off": round(statistics.median(off[kind.name][metric] for _, off in pairs), 3),
                "ratio": round(
                    statistics.median(on[kind.name][metric] / off[kind.name][metric] for on, off in pairs), 3
                ),
            }
        rows.append(row)
    return {
        "command": "python -m bench.rate_limits",
        "rounds": rounds,
        "requests": requests,
        "kinds": rows,
        "statements_us": {name: round(us, 1) for name, us in statements.items()},
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def database_backends() -> list[int]:
    """The PostgreSQL backends serving this database (ours and the on-commit publisher's)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [pid for (pid,) in cursor.fetchall()]


def markdown(results: dict) -> str:
    lines = [
        HEADING,
        "",
        "`python -m bench.rate_limits` (database `marketplace_bench_rate_limits`, production settings): the",
        "API's whole request stack in one process through Django's test client, one request at a time, with",
        "the limits on but out of reach (every request pays for its checks, none is refused) and off,",
        f"alternating round by round ({results['rounds']} rounds per mode, {results['requests']} requests of each kind",
        "per round). Times are the median of their mode's rounds; the ratio (on / off) is the median of",
        "the ratios of adjacent rounds, measured in one run, since absolute times drift with whatever",
        "else the machine runs. CPU is this process plus the database's PostgreSQL backends.",
        "",
        "| Request | What the limits add | Wall ms on / off | Ratio | CPU ms on / off | Ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["kinds"]:
        wall, cpu = row["wall_ms"], row["cpu_ms"]
        lines.append(
            f"| {row['kind']} | {row['checks']} | {wall['on']:.2f} / {wall['off']:.2f} | {wall['ratio']:.3f}x "
            f"| {cpu['on']:.2f} / {cpu['off']:.2f} | {cpu['ratio']:.3f}x |"
        )
    lines += ["", "The checks' statements alone, per call (wall, one connection):", ""]
    lines += [f"- {name}: {us:.0f} µs" for name, us in results["statements_us"].items()]
    lines += [
        "",
        f"({results['cpus']} CPUs; load average at the end {', '.join(f'{x:.2f}' for x in results['loadavg'])}.)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
