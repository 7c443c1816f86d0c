"""``python -m bench.tokens [--quick]``: what knox's hashed tokens cost the API, against DRF's clear-text ones.

In one process, on a database (``marketplace_bench_tokens``) and vhost of its own, under production
settings as the main benchmark runs them: the API's own views through Django's request handler
(``django.test.Client``: the whole middleware and DRF stack, no HTTP server, no load generator), so
that the CPU measured is the request's own. Three authentications take turns, round after round, on
the same buyers, tokens and product:

- ``drf``: DRF's TokenAuthentication on clear-text keys, what the API ran before (its
  ``rest_framework.authtoken`` is installed in this process only; its table created here);
- ``knox``: ``api_tokens.authentication.ApiTokenAuthentication``, what the API runs now;
- ``knox-stock``: knox's own TokenAuthentication on the same tokens, for comparison: it also reads
  every token of the user on each request (each buyer holds TOKENS_PER_BUYER).

Each round measures, per authentication, ``authenticate()`` alone (per call) and orders placed
through ``POST /api/orders/`` (per order): CPU of this thread, and of the whole process (the on-commit
publisher thread too) plus its PostgreSQL backends. Ratios are the median of each round's ratio.
Replaces (or appends) its section of docs/benchmarks.md, and writes bench/results/tokens.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import timeit
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from bench.broker import create_vhost, delete_vhost
from bench.config import ROOT, Target
from bench.data import create_database, drop_database
from bench.processes import cpu_seconds, log
from bench.report import TOKENS_HEADING as HEADING
from bench.report import replace_section
from bench.run import code_version, loadavg

TARGET = Target(db_name="marketplace_bench_tokens", vhost="marketplace-bench-tokens")
TOKENS_PER_BUYER = 3
BUYERS = 20
VARIANTS = {
    "drf": "rest_framework.authentication.TokenAuthentication",
    "knox": "api_tokens.authentication.ApiTokenAuthentication",
    "knox-stock": "knox.auth.TokenAuthentication",
}
LABELS = {
    "drf": "DRF `TokenAuthentication`, clear-text keys (before)",
    "knox": "knox digests, `ApiTokenAuthentication` (after)",
    "knox-stock": "knox's own `TokenAuthentication` (not used)",
}


@dataclass(frozen=True)
class Params:
    # Short rounds, many of them: the variants of a round run back to back, so that drift on a shared
    # machine (other work, CPU frequency) falls between rounds rather than between variants.
    rounds: int = 15
    authentications: int = 1000  # per variant and round
    orders: int = 150  # per variant and round


QUICK = Params(rounds=2, authentications=300, orders=30)


def setup_django() -> None:
    """Django for the bench database, with DRF's token app added: its model, not its migrations
    (they would run before or after api_tokens' conversion of their table, in no fixed order)."""
    # Production settings (Target.env); an order limit no run reaches, so that every order is placed
    # and the limiter's own statement is still made, as in production.
    # Connections kept for the whole run, so that the PostgreSQL backends measured stay the same ones.
    os.environ.update(TARGET.env(API_RATE_LIMIT_ORDERS="999999999/minute", DATABASE_CONN_MAX_AGE="3600"))
    import django
    from django.conf import settings

    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "rest_framework.authtoken"]
    settings.MIGRATION_MODULES = {**settings.MIGRATION_MODULES, "authtoken": None}
    django.setup()


def prepare() -> tuple[list[tuple[str, str]], int]:
    """Migrate, create DRF's token table, seed: each buyer's (DRF key, knox token), the product id."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from rest_framework.authtoken.models import Token

    from api_tokens.services import api_token_issue, api_token_revoke_all
    from orders.models import Product, Seller

    with open(os.devnull, "w") as quiet:
        call_command("migrate", interactive=False, verbosity=0, stdout=quiet)
        call_command("setup_broker", stdout=quiet)
    if Token._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(Token)
    with transaction.atomic():
        seller, _ = Seller.objects.get_or_create(name="Bench tokens", defaults={"email": "tokens@bench.example"})
        product, _ = Product.objects.update_or_create(
            sku="BENCH-TOKENS",
            defaults={"seller": seller, "name": "Bench token product", "price": Decimal("5.00"), "stock": 10**9},
        )
        keys = []
        for i in range(BUYERS):
            buyer, _ = get_user_model().objects.get_or_create(
                username=f"bench-tokens-{i:03d}", defaults={"email": f"bench-tokens-{i:03d}@example.com"}
            )
            api_token_revoke_all(user=buyer)
            knox = [api_token_issue(user=buyer, name=f"bench {n}").token for n in range(TOKENS_PER_BUYER)]
            keys.append((Token.objects.get_or_create(user=buyer)[0].key, knox[0]))
    return keys, product.pk


def use(variant: str) -> type:
    """Makes the order API authenticate with ``variant``; returns its class."""
    from django.utils.module_loading import import_string

    from orders.apis import OrderListCreateApi

    authentication = import_string(VARIANTS[variant])
    OrderListCreateApi.authentication_classes = [authentication]
    return authentication


def key_of(variant: str, keys: tuple[str, str]) -> str:
    return keys[0] if variant == "drf" else keys[1]


def database_cpu() -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend of the bench database (this thread's, the on-commit
    publisher's)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {pid: cpu_seconds([pid]) for (pid,) in cursor.fetchall()}


def database_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the backends of ``before`` spent since (one that went away counts nothing)."""
    now = {pid: cpu_seconds([pid]) for pid in before}
    return sum(max(0.0, now[pid] - before[pid]) for pid in before)


def measure_authentication(variant: str, keys: list[tuple[str, str]], count: int) -> dict:
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    authenticator = use(variant)()
    factory = RequestFactory()
    requests = [
        factory.get("/api/orders/", HTTP_AUTHORIZATION=f"Token {key_of(variant, keys[i % len(keys)])}")
        for i in range(count)
    ]
    with CaptureQueriesContext(connection) as queries:
        assert authenticator.authenticate(requests[0]) is not None
    cpu, database, wall = time.thread_time(), database_cpu(), time.perf_counter()
    for request in requests:
        authenticator.authenticate(request)
    cpu, database = time.thread_time() - cpu, database_cpu_since(database)
    wall = time.perf_counter() - wall
    return {
        "cpu_us": 1e6 * cpu / count,
        "total_cpu_us": 1e6 * (cpu + database) / count,
        "wall_us": 1e6 * wall / count,
        "queries": len(queries),
    }


def measure_orders(variant: str, keys: list[tuple[str, str]], product_id: int, count: int) -> dict:
    from django.test import Client

    use(variant)
    client = Client(HTTP_HOST="localhost")
    body = json.dumps({"lines": [{"product": product_id, "quantity": 1}]})
    headers = [f"Token {key_of(variant, keys[i % len(keys)])}" for i in range(count)]
    cpu, process, database = time.thread_time(), time.process_time(), database_cpu()
    wall = time.perf_counter()
    for authorization in headers:
        response = client.post("/api/orders/", body, content_type="application/json", HTTP_AUTHORIZATION=authorization)
        if response.status_code != 201:
            raise RuntimeError(f"{variant}: {response.status_code} {response.content[:500]!r}")
    cpu, process, database = time.thread_time() - cpu, time.process_time() - process, database_cpu_since(database)
    wall = time.perf_counter() - wall
    return {
        "cpu_ms": 1e3 * cpu / count,
        "total_cpu_ms": 1e3 * (process + database) / count,
        "wall_ms": 1e3 * wall / count,
    }


def sha512_us(token: str) -> float:
    from knox.crypto import hash_token

    runs = 20_000
    return 1e6 * min(timeit.repeat(lambda: hash_token(token), number=runs, repeat=3)) / runs


def run(params: Params) -> dict:
    keys, product_id = prepare()
    rounds: list[dict] = []
    variants = list(VARIANTS)
    for variant in variants:  # warm-up: imports, caches, connections
        measure_authentication(variant, keys, 50)
        measure_orders(variant, keys, product_id, 10)
    for number in range(params.rounds):
        order = variants[number % len(variants) :] + variants[: number % len(variants)]
        measured = {}
        for variant in order:
            measured[variant] = {
                "authentication": measure_authentication(variant, keys, params.authentications),
                "orders": measure_orders(variant, keys, product_id, params.orders),
            }
        rounds.append(measured)
        log(
            f"round {number + 1}/{params.rounds}: "
            + ", ".join(f"{v} {m['orders']['cpu_ms']:.2f} ms/order" for v, m in measured.items())
        )
    return {"rounds": rounds, "sha512_us": sha512_us(keys[0][1]), "summary": summarize(rounds)}


def summarize(rounds: list[dict]) -> dict:
    """Per variant: medians over the rounds; against DRF, each round's ratio and difference (the
    variants of a round ran back to back), as their median and range."""

    def median(variant: str, part: str, field: str) -> float:
        return statistics.median(r[variant][part][field] for r in rounds)

    def ratio(variant: str, part: str, field: str) -> dict:
        ratios = [r[variant][part][field] / r["drf"][part][field] for r in rounds]
        return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}

    def difference(variant: str, part: str, field: str) -> float:
        return statistics.median(r[variant][part][field] - r["drf"][part][field] for r in rounds)

    return {
        variant: {
            "auth_queries": rounds[0][variant]["authentication"]["queries"],
            "auth_cpu_us": median(variant, "authentication", "cpu_us"),
            "auth_total_cpu_us": median(variant, "authentication", "total_cpu_us"),
            "auth_wall_us": median(variant, "authentication", "wall_us"),
            "auth_cpu_ratio": ratio(variant, "authentication", "cpu_us"),
            "auth_cpu_difference_us": difference(variant, "authentication", "cpu_us"),
            "order_cpu_ms": median(variant, "orders", "cpu_ms"),
            "order_total_cpu_ms": median(variant, "orders", "total_cpu_ms"),
            "order_wall_ms": median(variant, "orders", "wall_ms"),
            "order_cpu_ratio": ratio(variant, "orders", "cpu_ms"),
            "order_total_cpu_ratio": ratio(variant, "orders", "total_cpu_ms"),
        }
        for variant in VARIANTS
    }


def spread(ratio: dict) -> str:
    return f"{ratio['median']:.3f}x ({ratio['low']:.2f}-{ratio['high']:.2f})"


def resolved(ratio: dict) -> str:
    if ratio["low"] <= 1 <= ratio["high"]:
        return "some rounds cheaper, some dearer: within this run's noise"
    return "every round " + ("dearer" if ratio["low"] > 1 else "cheaper")


def section(results: dict) -> str:
    s, p = results["summary"], results["params"]
    knox, stock = s["knox"], s["knox-stock"]
    lines = [
        HEADING,
        "",
        f"`{results['command']}` ({results['date']}, code {results['code']}): the API's own views in one process "
        "under production settings, on a database of its own. The three authentications take turns: "
        f"{p['rounds']} rounds of {p['authentications']} `authenticate()` calls and {p['orders']} orders "
        f"(`POST /api/orders/`, one line) each; {BUYERS} buyers holding {TOKENS_PER_BUYER} tokens each. CPU is the "
        "request thread's (`time.thread_time`), and in *all* columns the whole process's (the on-commit publisher "
        "thread too) plus its PostgreSQL backends' (/proc). Medians of the rounds; a ratio to DRF is the median "
        "of the rounds' ratios (lowest-highest round in brackets).",
        "",
        "| authentication | queries | CPU µs per `authenticate()` | ratio to DRF | all | CPU ms per order "
        "| ratio to DRF | all | ratio to DRF |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, label in LABELS.items():
        v = s[variant]
        lines.append(
            f"| {label} | {v['auth_queries']} | {v['auth_cpu_us']:.0f} | {spread(v['auth_cpu_ratio'])} | "
            f"{v['auth_total_cpu_us']:.0f} | {v['order_cpu_ms']:.2f} | {spread(v['order_cpu_ratio'])} | "
            f"{v['order_total_cpu_ms']:.2f} | {spread(v['order_total_cpu_ratio'])} |"
        )
    lines += [
        "",
        f"- **What hashed tokens cost**: {knox['auth_cpu_difference_us']:+.0f} µs CPU per request against DRF's "
        f"check (median of the rounds' differences; SHA-512 of a token takes {results['sha512_us']:.1f} µs), "
        f"{knox['auth_cpu_difference_us'] / 1000 / s['drf']['order_cpu_ms']:+.1%} of an order's CPU: per order "
        f"{spread(knox['order_cpu_ratio'])} of DRF's ({resolved(knox['order_cpu_ratio'])}). Both read one row per "
        "request (DRF by key; knox by the token's 15-character prefix, then compare digests).",
        f"- knox's own check costs {stock['auth_cpu_difference_us']:+.0f} µs per request ({stock['auth_queries']} "
        f"queries: it reads all the user's tokens on each request to delete the expired ones), "
        f"{spread(stock['order_cpu_ratio'])} per order; `ApiTokenAuthentication` leaves that to issuance and "
        "`manage.py api_tokens prune`.",
        f"- Load average at start: {results['loadavg_start']}; at end: {results['loadavg_end']} (2 shared cores: "
        "compare figures of the same run).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute; prints, writes nothing unless --output")
    parser.add_argument("--output", type=Path, help="the report whose section to write (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else Params()
    output = args.output or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    create_database(TARGET)
    create_vhost(TARGET)
    setup_django()
    from marketplace.events.outbox import on_commit_publisher

    try:
        started = loadavg()
        results = run(params)
    finally:
        on_commit_publisher.stop()
        from django.db import connections

        connections.close_all()
        delete_vhost(TARGET)
        drop_database(TARGET)
    results |= {
        "params": params.__dict__,
        "command": (".venv/bin/python -m bench.tokens " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
        "date": time.strftime("%Y-%m-%d"),
        "code": code_version(),
        "loadavg_start": started,
        "loadavg_end": loadavg(),
    }
    text = section(results)
    print(text)
    if output:
        raw = output.with_name("tokens.json") if args.output else ROOT / "bench" / "results" / "tokens.json"
        raw.write_text(json.dumps(results, indent=1))
        replace_section(output, HEADING, text)
        print(f"wrote {output} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
