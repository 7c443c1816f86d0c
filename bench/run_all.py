"""Run every benchmark against an isolated stack and write the results.

    .venv/bin/python bench/run_all.py            # ~10 minutes, then drops the bench DB and vhost
    .venv/bin/python bench/run_all.py --quick    # smoke test: small counts, one round each
    .venv/bin/python bench/run_all.py --keep     # leave marketplace_bench and the vhost behind

Isolation: database ``marketplace_bench``, RabbitMQ vhost ``marketplace-bench``, gunicorn on
127.0.0.1:8100. Starts (and always stops) gunicorn, the outbox relay and the three Celery workers.
Writes bench/results/latest.json (raw) and bench/results/latest.md (tables for docs/benchmarks.md);
process logs go to a temporary directory printed at the start.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lib
from lib import log

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Bench:
    def __init__(self, quick: bool):
        self.quick = quick
        self.repeats = 1 if quick else 3
        self.scale = 0.15 if quick else 1.0
        self.logdir = Path(tempfile.mkdtemp(prefix="marketplace-bench-"))
        self.stack = lib.Stack(self.logdir)
        self.results: dict = {"quick": quick, "logdir": str(self.logdir)}
        self.tokens: list[str] = []
        self.products: list[int] = []
        self.hot: int = 0
        self.watch = lib.BrokerWatch()

    def n(self, count: int) -> int:
        return max(10, int(count * self.scale))

    # --- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        log(f"logs in {self.logdir}")
        lib.create_isolated_env()
        env = lib.bench_env()
        lib.manage("migrate", "--no-input", env=env)
        lib.manage("setup_broker", env=env)
        lib.manage("seed_demo", env=env)
        out = lib.manage(
            "shell", "-c", "exec(open('bench/setup_data.py').read())",
            env=lib.bench_env(BENCH_BUYERS="32", BENCH_PRODUCTS="200"),
        ).stdout  # fmt: skip
        data = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH_DATA ")).split(" ", 1)[1])
        self.tokens, self.products, self.hot = data["tokens"], data["products"], data["hot_product"]
        self.results["machine"] = lib.machine_info()
        log(f"{len(self.tokens)} buyers, {len(self.products)} products; starting web, relay, workers")
        self.stack.start_workers()
        self.stack.start_relay()
        self.stack.start_web()

    def two_lines(self, rng):
        a, b = rng.sample(self.products, 2)
        return [(a, 1), (b, 1)]

    def one_line(self, rng):
        return [(rng.choice(self.products), 1)]

    def hot_line(self, rng):
        return [(self.hot, 1)]

    def settle(self, timeout: float = 120) -> float | None:
        """Wait until the outbox is empty and every subscriber handled every event."""
        ok, waited = lib.wait_subscribers_done(timeout)
        if not ok:
            log(f"subscribers not caught up after {timeout}s: {lib.processed_counts()}, pending {lib.pending_outbox()}")
        return round(waited, 1) if ok else None

    def load(self, make_lines, concurrency, max_requests, max_seconds, tokens=None, **kw) -> lib.LoadResult:
        return lib.post_orders(
            tokens=tokens or self.tokens,
            make_lines=make_lines,
            concurrency=concurrency,
            max_requests=max_requests,
            max_seconds=max_seconds,
            **kw,
        )

    def rounds(self, label, make_lines, concurrency, max_requests, max_seconds, tokens=None) -> dict:
        rounds = []
        for r in range(self.repeats):
            self.settle()
            load_before = lib.Path("/proc/loadavg").read_text().split()[0]
            t0 = time.time()
            cpu0 = lib.cpu_snapshot(self.stack)
            res = self.load(make_lines, concurrency, max_requests, max_seconds, tokens)
            summary = res.summary()
            summary["shared_broker_down_s"] = self.watch.down_seconds(t0, time.time())
            summary["loadavg_1m_before"] = float(load_before)
            summary["catch_up_s"] = self.settle()
            # CPU from the first request until every subscriber handled every order of the round
            cpu = lib.cpu_delta(cpu0, lib.cpu_snapshot(self.stack))
            orders = max(1, len(res.ok))
            summary["cpu_s"] = cpu
            summary["cpu_ms_per_order"] = {
                k: round(v * 1000 / orders, 1) for k, v in cpu.items() if not k.startswith("_")
            }
            errors = [s.error for s in res.samples if s.status != 201][:5]
            if errors:
                summary["first_errors"] = errors
            rounds.append(summary)
            log(
                f"{label} c={concurrency} round {r + 1}: {summary['requests']} req, {summary['throughput_rps']} rps, "
                f"p50 {summary['p50_ms']} p95 {summary['p95_ms']} p99 {summary['p99_ms']} max {summary['max_ms']} ms, "
                f"statuses {summary['statuses']}, catch-up {summary['catch_up_s']}s, others' CPU "
                f"{round(summary['cpu_s']['_other_processes_s'] / max(0.01, summary['cpu_s']['_machine_capacity_s']), 2)}"
                + (
                    f", SHARED BROKER DOWN {summary['shared_broker_down_s']}s"
                    if summary["shared_broker_down_s"]
                    else ""
                )
            )
        return aggregate(rounds)

    # --- 0. in-process breakdown ------------------------------------------------------------
    def breakdown(self) -> None:
        log("breakdown: in-process timing of one order")
        out = lib.manage(
            "shell", "-c", "exec(open('bench/breakdown.py').read())",
            env=lib.bench_env(BENCH_N=str(self.n(200)), BENCH_PRODUCTS_JSON=json.dumps(self.products)),
        ).stdout  # fmt: skip
        self.results["breakdown"] = json.loads(
            next(line for line in out.splitlines() if line.startswith("BENCH_BREAKDOWN ")).split(" ", 1)[1]
        )
        b = self.results["breakdown"]
        log(
            f"breakdown: request {b['request_in_process']['p50_ms']} ms in-process, order_place "
            f"{b['order_place_total']['p50_ms']} (publish {b['order_place_publish_part']['p50_ms']}), "
            f"{b['request_queries']} queries"
        )

    # --- 1. POST latency/throughput, broker healthy ------------------------------------------
    def orders_healthy(self) -> None:
        out = {}
        for c, count, seconds in ((1, 200, 15), (8, 800, 15), (32, 1000, 15)):
            out[f"c{c}"] = self.rounds("healthy", self.two_lines, c, self.n(count), seconds)
        self.results["orders_healthy"] = out

    # --- 6. hot row contention ---------------------------------------------------------------
    def hot_contention(self) -> None:
        self.results["hot_contention"] = {
            "spread_1line_c32": self.rounds("spread", self.one_line, 32, self.n(1000), 15),
            "hot_1line_c32": self.rounds("hot", self.hot_line, 32, self.n(1000), 15),
        }
        self.results["hot_contention"]["stock_check"] = self.stock_check()

    def stock_check(self) -> dict:
        with lib.db() as conn:
            sold = conn.execute(
                "SELECT coalesce(sum(quantity), 0) FROM orders_orderline WHERE product_id = %s", [self.hot]
            ).fetchone()[0]
            stock = conn.execute("SELECT stock FROM orders_product WHERE id = %s", [self.hot]).fetchone()[0]
        return {"hot_product_sold": int(sold), "hot_product_stock": stock, "consistent": sold + stock == 10_000_000}

    # --- 3. end-to-end ----------------------------------------------------------------------
    def end_to_end(self) -> None:
        out = {}
        for label, c, interval in (("paced_20_per_s", 1, 0.05), ("burst_c8", 8, 0.0)):
            self.settle()
            t0 = time.time()
            res = self.load(self.two_lines, c, self.n(200), 60, interval=interval)
            done = self.settle(180)
            out[label] = e2e_report(res)
            out[label]["shared_broker_down_s"] = self.watch.down_seconds(t0, time.time())
            out[label]["load"] = res.summary()
            out[label]["all_done_s"] = done
            e = out[label]
            log(f"e2e {label}: all effects p50 {e['all_effects']['p50_ms']} p95 {e['all_effects']['p95_ms']} ms")
        self.results["end_to_end"] = out

    # --- 5. memory --------------------------------------------------------------------------
    def memory(self) -> None:
        mem = {}
        web = self.stack.procs["web"]
        mem["gunicorn master"] = lib.rss_kib(web.pid)
        for i, pid in enumerate(self.stack.web_worker_pids()):
            mem[f"gunicorn worker {i + 1}"] = lib.rss_kib(pid)
        mem["relay"] = lib.rss_kib(self.stack.procs["relay"].pid)
        for sub in lib.SUBSCRIBERS:
            proc = self.stack.procs[sub]
            mem[f"{sub} main"] = lib.rss_kib(proc.pid)
            for i, pid in enumerate(lib.children(proc.pid)):
                mem[f"{sub} child {i + 1}"] = lib.rss_kib(pid)
        with lib.db() as conn:
            mem["_orders_in_db"] = conn.execute("SELECT count(*) FROM orders_order").fetchone()[0]
        self.results["memory"] = mem
        log(
            "memory: "
            + ", ".join(f"{k} {v.get('VmRSS', 0) // 1024} MiB" for k, v in mem.items() if isinstance(v, dict))
        )

    # --- 2. broker down -----------------------------------------------------------------------
    def broker_down(self) -> None:
        out = {}
        hole = lib.BlackHole()
        try:
            for mode, url in (("refused", lib.REFUSED_BROKER), ("blackholed", hole.url)):
                out[mode] = self.outage(mode, url)
            out["blackhole_connections_accepted"] = hole.accepted
        finally:
            hole.close()
        self.results["broker_down"] = out

    def outage(self, mode: str, url: str) -> dict:
        self.settle()
        base_id = lib.scalar("SELECT coalesce(max(id), 0) FROM events_outboxevent")
        log(f"broker {mode}: web and relay now use {url}")
        self.stack.start_relay(url)
        self.stack.start_web(url)
        t_outage = time.monotonic()
        t_wall = time.time()
        levels = {}
        all_ids = []
        for c, count, seconds in ((1, 300, 10), (8, 800, 10), (32, 800, 10)):
            cpu0 = lib.cpu_snapshot(self.stack)
            res = self.load(self.two_lines, c, self.n(count), seconds)
            cpu = lib.cpu_delta(cpu0, lib.cpu_snapshot(self.stack))
            s = res.summary()
            s["cpu_ms_per_order"] = {
                k: round(v * 1000 / max(1, len(res.ok)), 1) for k, v in cpu.items() if not k.startswith("_")
            }
            s["other_processes_cpu_share"] = round(cpu["_other_processes_s"] / max(0.01, cpu["_machine_capacity_s"]), 2)
            s["machine_busy_share"] = round(cpu["_machine_busy_s"] / max(0.01, cpu["_machine_capacity_s"]), 2)
            t0 = res.samples[0].started if res.samples else 0
            s["slow_over_500ms_at_s"] = [
                [round(x.started - t0, 2), round(x.latency, 2)] for x in res.samples if x.latency > 0.5
            ][:60]
            levels[f"c{c}"] = s
            all_ids += [x.order_id for x in res.samples if x.order_id]
            log(
                f"{mode} c={c}: {s['requests']} req {s['statuses']}, {s['throughput_rps']} rps, p50 {s['p50_ms']} "
                f"p99 {s['p99_ms']} max {s['max_ms']} ms, {s['over_1s']} over 1 s, others' CPU {s['other_processes_cpu_share']}"
            )
        self.stack.stop("relay")  # the outage relay records its last batch's failures before it exits
        with lib.db() as conn:
            written = conn.execute("SELECT count(*) FROM events_outboxevent WHERE id > %s", [base_id]).fetchone()[0]
            published_during = conn.execute(
                "SELECT count(*) FROM events_outboxevent WHERE id > %s AND published_at IS NOT NULL", [base_id]
            ).fetchone()[0]
            attempts = conn.execute(
                "SELECT max(attempts), max(extract(epoch FROM claimed_until - now()))::float "
                "FROM events_outboxevent WHERE published_at IS NULL"
            ).fetchone()
        pending = lib.pending_outbox()
        lag_before = lib.outbox_lag()
        outage_s = time.monotonic() - t_outage
        log(
            f"{mode}: {len(all_ids)} orders accepted, {pending} events pending, lag {lag_before:.1f}s; relay -> good broker"
        )
        # Recovery: the relay gets the real broker back (the web keeps the bad URL meanwhile).
        self.stack.start_relay(lib.GOOD_BROKER)
        t0 = time.monotonic()
        lag_trace = []
        while time.monotonic() - t0 < 120:
            p = lib.pending_outbox()
            lag_trace.append([round(time.monotonic() - t0, 1), p, round(lib.outbox_lag(), 1)])
            if p == 0:
                break
            time.sleep(1)
        drain_s = time.monotonic() - t0
        pending_after = lib.pending_outbox()
        self.stack.start_web(lib.GOOD_BROKER)
        effects_s = self.settle(180)
        with lib.db() as conn:
            orders_with_event = conn.execute(
                "SELECT count(DISTINCT (envelope->'data'->>'order_id')::bigint) FROM events_outboxevent "
                "WHERE id > %s AND published_at IS NOT NULL",
                [base_id],
            ).fetchone()[0]
        return {
            "levels": levels,
            "shared_broker_down_s": self.watch.down_seconds(t_wall, time.time()),
            "outage_s": round(outage_s, 1),
            "orders_201": len(all_ids),
            "outbox_rows_written": written,
            "published_during_outage": published_during,
            "pending_at_recovery": pending,
            "max_attempts_pending": attempts[0],
            "max_backoff_left_s": round(attempts[1] or 0, 1),
            "lag_at_recovery_s": round(lag_before, 1),
            "relay_drain_s": round(drain_s, 1),
            "pending_after_drain": pending_after,
            "lag_trace": lag_trace,
            "orders_with_published_event": orders_with_event,
            "all_subscriber_effects_s_after_web_restart": effects_s,
            "lag_after": round(lib.outbox_lag(), 1),
        }

    # --- 4. relay throughput, 7. subscriber drain ----------------------------------------------
    def relay_throughput(self) -> None:
        self.settle()
        self.stack.stop("relay")
        self.stack.stop_workers()
        lib.purge_queues()
        env = lib.bench_env()
        max_real = lib.scalar("SELECT max(id) FROM events_outboxevent")
        rows = self.n(5000)
        out = {"rows_per_run": rows}
        startup = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            lib.manage("relay_outbox", "--once", env=env)
            startup.append(time.perf_counter() - t0)
        out["startup_empty_s"] = lib.median([round(x, 2) for x in startup])
        for relays in (1, 2):
            runs = []
            for r in range(self.repeats):
                insert_pending(rows, max_real)
                t_wall = time.time()
                t0 = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        [lib.PYTHON, "manage.py", "relay_outbox", "--once"], cwd=lib.ROOT, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                    )
                    for _ in range(relays)
                ]  # fmt: skip
                outputs = []
                for p in procs:
                    try:
                        outputs.append(p.communicate(timeout=300)[0].strip().splitlines()[-1:])
                    except subprocess.TimeoutExpired:
                        lib.os.killpg(p.pid, signal.SIGKILL)
                        outputs.append(["timeout"])
                elapsed = time.perf_counter() - t0
                depths = {k: v[0] for k, v in lib.queue_stats().items()}
                pending = lib.pending_outbox()
                run = {
                    "seconds": round(elapsed, 2),
                    "events_per_s": round(rows / elapsed, 1),
                    "events_per_s_excl_startup": round(rows / max(0.01, elapsed - out["startup_empty_s"]), 1),
                    "pending_after": pending,
                    "queue_depths": depths,
                    "no_duplicates_no_loss": all(d == rows for d in depths.values()) and pending == 0,
                    "relay_outputs": outputs,
                    "shared_broker_down_s": self.watch.down_seconds(t_wall, time.time()),
                }
                runs.append(run)
                log(
                    f"relay x{relays} run {r + 1}: {rows} rows in {elapsed:.2f}s = {run['events_per_s']}/s, depths {depths}"
                )
                last = relays == 2 and r == self.repeats - 1
                if not last:
                    lib.purge_queues()
            out[f"relays_{relays}"] = {
                "runs": runs,
                "median_seconds": lib.median([x["seconds"] for x in runs]),
                "median_events_per_s": lib.median([x["events_per_s"] for x in runs]),
                "median_events_per_s_excl_startup": lib.median([x["events_per_s_excl_startup"] for x in runs]),
            }
        self.results["relay"] = out
        self.subscriber_drain(rows)

    def subscriber_drain(self, rows: int) -> None:
        """Workers were stopped while the last relay run filled each queue with ``rows`` events."""
        before = lib.processed_counts()
        since = lib.scalar("SELECT now()")
        log(f"subscriber drain: starting workers on {rows} queued events per subscriber (bounded 30 s)")
        self.stack.start_workers()
        t0 = time.monotonic()
        done = {}
        while time.monotonic() - t0 < 30 and len(done) < len(lib.SUBSCRIBERS):
            counts = lib.processed_counts()
            for sub in lib.SUBSCRIBERS:
                if sub not in done and counts[sub] - before[sub] >= rows:
                    done[sub] = round(time.monotonic() - t0, 1)
            time.sleep(0.5)
        counts = lib.processed_counts()
        with lib.db() as conn:
            spans = dict(
                (row[0], row[1:])
                for row in conn.execute(
                    "SELECT subscriber, count(*), extract(epoch FROM max(processed_at) - min(processed_at))::float "
                    "FROM events_processedevent WHERE processed_at >= %s GROUP BY subscriber",
                    [since],
                ).fetchall()
            )
        out = {}
        for sub in lib.SUBSCRIBERS:
            handled = counts[sub] - before[sub]
            n, span = spans.get(sub, (0, 0.0))
            out[sub] = {
                "handled": handled,
                "of": rows,
                "finished_after_s": done.get(sub),
                "events_per_s": round(n / span, 1) if span else None,
            }
        out["cpu_note"] = "all three workers share the 2 cores with PostgreSQL and RabbitMQ"
        self.results["subscriber_drain"] = out
        log(f"subscriber drain: {out}")
        self.stack.stop_workers()

    # --- errors -----------------------------------------------------------------------------
    def scan_logs(self) -> None:
        found = {}
        for path in sorted(self.logdir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()
            found[path.stem] = {
                "lines": len(text),
                "error_lines": sum(
                    1 for line in text if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
                ),
                "warning_lines": sum(1 for line in text if " WARNING " in line),
                "sample": [
                    line[:240] for line in text if " ERROR " in line or "Traceback" in line or " CRITICAL " in line
                ][:5],
                "warning_sample": [line[:240] for line in text if " WARNING " in line][:3],
            }
        self.results["logs"] = found
        try:
            self.results["failures"] = lib.failure_summary()
        except Exception as exc:
            self.results["failures"] = repr(exc)


def aggregate(rounds: list[dict]) -> dict:
    statuses: dict[str, int] = {}
    for r in rounds:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "rounds": rounds,
        "requests": sum(r["requests"] for r in rounds),
        "statuses": statuses,
        "throughput_rps": lib.median([r["throughput_rps"] for r in rounds]),
        "throughput_range": [min(r["throughput_rps"] for r in rounds), max(r["throughput_rps"] for r in rounds)],
        "p50_ms": lib.median([r["p50_ms"] for r in rounds]),
        "p95_ms": lib.median([r["p95_ms"] for r in rounds]),
        "p99_ms": lib.median([r["p99_ms"] for r in rounds]),
        "p99_range": [min(r["p99_ms"] for r in rounds), max(r["p99_ms"] for r in rounds)],
        "max_ms": max(r["max_ms"] for r in rounds),
        "catch_up_s": lib.median([r["catch_up_s"] for r in rounds]),
        "shared_broker_down_s": sum(r["shared_broker_down_s"] for r in rounds),
        "cpu_ms_per_order": {
            k: lib.median([r["cpu_ms_per_order"].get(k) for r in rounds]) for k in rounds[0]["cpu_ms_per_order"]
        },
        "other_processes_cpu_share": lib.median(
            [round(r["cpu_s"]["_other_processes_s"] / max(0.01, r["cpu_s"]["_machine_capacity_s"]), 2) for r in rounds]
        ),
        "machine_busy_share": lib.median(
            [round(r["cpu_s"]["_machine_busy_s"] / max(0.01, r["cpu_s"]["_machine_capacity_s"]), 2) for r in rounds]
        ),
    }


def insert_pending(rows: int, max_real_id: int) -> None:
    """``rows`` pending outbox rows: copies of real order.placed envelopes with fresh ids."""
    with lib.db() as conn:
        conn.execute(
            """
            WITH src AS (
                SELECT envelope, row_number() OVER (ORDER BY id) AS rn
                FROM events_outboxevent WHERE event_type = 'order.placed' AND id <= %(max_real)s
            ), g AS (
                SELECT i, gen_random_uuid() AS u FROM generate_series(1, %(rows)s) AS i
            )
            INSERT INTO events_outboxevent
                (event_id, event_type, envelope, created_at, claimed_until, published_at, attempts, last_error)
            SELECT g.u, 'order.placed', jsonb_set(src.envelope, '{id}', to_jsonb(g.u::text)), now(), NULL, NULL, 0, ''
            FROM g JOIN src ON src.rn = 1 + (g.i %% (SELECT count(*) FROM src))
            ORDER BY g.i
            """,
            {"rows": rows, "max_real": max_real_id},
        )


def e2e_report(res: lib.LoadResult) -> dict:
    """From the 201 (client clock) to each subscriber's committed effect (worker clock, same host)."""
    ids = [s.order_id for s in res.samples if s.order_id]
    answered = {s.order_id: s.started + s.latency for s in res.samples if s.order_id}
    with lib.db() as conn:
        rows = conn.execute(
            """
            SELECT o.id,
                   extract(epoch FROM o.created_at)::float,
                   extract(epoch FROM ob.published_at)::float,
                   extract(epoch FROM (SELECT max(sent_at) FROM notifications_notification n
                                       WHERE n.order_id = o.id AND n.kind = 'order_confirmation'))::float,
                   extract(epoch FROM (SELECT max(sent_at) FROM notifications_notification n
                                       WHERE n.order_id = o.id AND n.kind = 'seller_order'))::float,
                   (SELECT count(*) FROM notifications_notification n WHERE n.order_id = o.id AND n.kind = 'seller_order'),
                   (SELECT count(DISTINCT seller_id) FROM orders_orderline l WHERE l.order_id = o.id),
                   extract(epoch FROM (SELECT processed_at FROM events_processedevent p
                                       WHERE p.subscriber = 'customer_segmentation'
                                         AND p.event_id = ob.event_id))::float
            FROM orders_order o
            JOIN events_outboxevent ob ON (ob.envelope->'data'->>'order_id')::bigint = o.id
            WHERE o.id = ANY(%s)
            """,
            [ids],
        ).fetchall()
    publish, confirm, sellers, segment, everything = [], [], [], [], []
    incomplete = 0
    incomplete_samples = []
    for oid, created, published, conf, sell, sell_n, sell_expected, seg in rows:
        t201 = answered[oid]
        if None in (published, conf, sell, seg) or sell_n != sell_expected:
            incomplete += 1
            if len(incomplete_samples) < 5:
                incomplete_samples.append([oid, published, conf, sell, sell_n, sell_expected, seg])
            continue
        publish.append(published - created)
        confirm.append(conf - t201)
        sellers.append(sell - t201)
        segment.append(seg - t201)
        everything.append(max(conf, sell, seg) - t201)

    def stats(values):
        v = sorted(x * 1000 for x in values)
        return {"p50_ms": lib.pct(v, 50), "p95_ms": lib.pct(v, 95), "max_ms": round(v[-1], 1) if v else None}

    return {
        "orders": len(ids),
        "complete": len(everything),
        "incomplete": incomplete + (len(ids) - len(rows)),
        "incomplete_samples": incomplete_samples,
        "commit_to_published": stats(publish),
        "order_confirmation": stats(confirm),
        "seller_notification": stats(sellers),
        "customer_segmentation": stats(segment),
        "all_effects": stats(everything),
    }


# --- markdown -------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    out = []
    m = results.get("machine", {})
    if m:
        out += [
            "### Machine",
            "",
            f"- {m.get('nproc')} vCPU ({m.get('cpu')}), {m.get('mem_total_mib')} MiB RAM, Linux {m.get('kernel')}",
            f"- Python {m.get('python')}, PostgreSQL {m.get('postgresql')}, RabbitMQ {m.get('rabbitmq')} "
            f"({m.get('erlang')}), Django {m.get('django')}, DRF {m.get('drf')}, Celery {m.get('celery')}, "
            f"kombu {m.get('kombu')}, gunicorn {m.get('gunicorn')}, psycopg {m.get('psycopg')}",
            f"- load average at start: {m.get('loadavg_at_start')}",
            "",
        ]

    def table(title, rows: dict):
        out.extend([f"### {title}", "", "| run | requests | non-201 | throughput (req/s) | p50 ms | p95 ms | p99 ms | max ms | catch-up s |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"])  # fmt: skip
        for name, a in rows.items():
            non201 = sum(v for k, v in a["statuses"].items() if k != "201")
            out.append(
                f"| {name} | {a['requests']} | {non201} | {a['throughput_rps']} ({a['throughput_range'][0]}-"
                f"{a['throughput_range'][1]}) | {a['p50_ms']} | {a['p95_ms']} | {a['p99_ms']} ({a['p99_range'][0]}-"
                f"{a['p99_range'][1]}) | {a['max_ms']} | {a['catch_up_s']} |"
            )
        out.append("")

    def cpu_table(title, rows: dict):
        keys = list(next(iter(rows.values()))["cpu_ms_per_order"])
        out.extend([f"### {title}", "", "| run | " + " | ".join(keys) + " | total ours | machine busy | other people's processes |",
                    "| --- |" + " ---: |" * (len(keys) + 3)])  # fmt: skip
        for name, a in rows.items():
            c = a["cpu_ms_per_order"]
            out.append(
                f"| {name} | "
                + " | ".join(str(c[k]) for k in keys)
                + f" | {round(sum(v or 0 for v in c.values()), 1)} | "
                f"{round(100 * (a['machine_busy_share'] or 0))}% | {round(100 * (a['other_processes_cpu_share'] or 0))}% |"
            )
        out.append("")

    b = results.get("breakdown")
    if b:
        out += ["### Breakdown (in-process, p50 / p95 ms)", "", "| part | p50 | p95 |", "| --- | ---: | ---: |"]
        for key in ("db_select_1", "db_commit_1_row", "order_place_total", "order_place_own_cpu", "order_place_transaction_part", "order_place_no_publish_idle_workers", "order_place_publish_part",
                    "publish_part_broker_confirm", "publish_part_mark_published_update",
                    "publish_alone_warm", "request_in_process", "request_in_process_own_cpu"):  # fmt: skip
            out.append(f"| {key} | {b[key]['p50_ms']} | {b[key]['p95_ms']} |")
        out += [
            "",
            f"SQL statements: order_place {b['order_place_queries']}, whole request {b['request_queries']}. "
            f"First publish on a new connection (connect + declare topology): {b.get('publish_part_first_connect_ms')} ms.",
            "",
        ]
        if b.get("order_place_statements"):
            out += ["Each statement of the order transaction (wall time incl. ORM, ms):", "",
                    "| statement | p50 | p95 |", "| --- | ---: | ---: |"]  # fmt: skip
            for k, v in b["order_place_statements"].items():
                out.append(f"| {k} | {v['p50_ms']} | {v['p95_ms']} |")
            out.append("")
    if "orders_healthy" in results:
        table("POST /api/orders/, broker healthy (2-line orders)", results["orders_healthy"])
        cpu_table("CPU ms per order, from first request until all subscribers caught up", results["orders_healthy"])
    if "hot_contention" in results:
        h = results["hot_contention"]
        table("Hot row: 32 buyers, 1-line orders", {k: v for k, v in h.items() if k != "stock_check"})
        out += [f"Stock check: {h['stock_check']}", ""]
        cpu_table("CPU ms per order (hot row runs)", {k: v for k, v in h.items() if k != "stock_check"})
    if "end_to_end" in results:
        out += ["### End to end: 201 → effect committed (ms)", "",
                "| load | orders | complete | commit→published p50/p95 | confirmation p50/p95 | sellers p50/p95 | segmentation p50/p95 | all three p50 / p95 / max |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for name, e in results["end_to_end"].items():
            f = lambda k, e=e: f"{e[k]['p50_ms']} / {e[k]['p95_ms']}"  # noqa: E731
            out.append(
                f"| {name} ({e['load']['throughput_rps']} orders/s) | {e['orders']} | {e['complete']} | {f('commit_to_published')} | "
                f"{f('order_confirmation')} | {f('seller_notification')} | {f('customer_segmentation')} | "
                f"{e['all_effects']['p50_ms']} / {e['all_effects']['p95_ms']} / {e['all_effects']['max_ms']} |"
            )
        out.append("")
    if "broker_down" in results:
        out += ["### Broker down", "",
                "| mode | c | requests | statuses | throughput | p50 ms | p95 ms | p99 ms | max ms | > 1 s |",
                "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for mode in ("refused", "blackholed"):
            d = results["broker_down"].get(mode)
            if not d:
                continue
            for _level, s in d["levels"].items():
                out.append(
                    f"| {mode} | {s['concurrency']} | {s['requests']} | {s['statuses']} | {s['throughput_rps']} | "
                    f"{s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['max_ms']} | {s['over_1s']} |"
                )
        out += ["", "CPU ms per order during the outage runs (no events reach the workers):", "",
                "| mode | c | web | postgres | workers (3) | rabbitmq | machine busy | other people's processes |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for mode in ("refused", "blackholed"):
            d = results["broker_down"].get(mode)
            for _level, s in (d or {}).get("levels", {}).items():
                c = s.get("cpu_ms_per_order", {})
                workers = round(sum(v for k, v in c.items() if k.startswith("worker")), 1)
                out.append(
                    f"| {mode} | {s['concurrency']} | {c.get('web (gunicorn)')} | {c.get('postgres (bench db backends)')} | "
                    f"{workers} | {c.get('rabbitmq (shared node)')} | {round(100 * s['machine_busy_share'])}% | "
                    f"{round(100 * s['other_processes_cpu_share'])}% |"
                )
        out += ["", "| mode | orders 201 | pending at recovery | lag at recovery s | max attempts | longest backoff left s | relay drain s | pending after | effects done s |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for mode in ("refused", "blackholed"):
            d = results["broker_down"].get(mode)
            if d:
                out.append(
                    f"| {mode} | {d['orders_201']} | {d['pending_at_recovery']} | {d['lag_at_recovery_s']} | "
                    f"{d['max_attempts_pending']} | {d['max_backoff_left_s']} | {d['relay_drain_s']} | "
                    f"{d['pending_after_drain']} | {d['all_subscriber_effects_s_after_web_restart']} |"
                )
        out.append("")
    if "memory" in results:
        out += ["### Memory after load (MiB)", "", "| process | VmRSS | VmHWM (peak) |", "| --- | ---: | ---: |"]
        for k, v in results["memory"].items():
            if isinstance(v, dict):
                out.append(f"| {k} | {v.get('VmRSS', 0) / 1024:.1f} | {v.get('VmHWM', 0) / 1024:.1f} |")
        out += ["", f"Orders in the database at that point: {results['memory'].get('_orders_in_db')}", ""]
    if "relay" in results:
        r = results["relay"]
        out += [f"### Relay: {r['rows_per_run']} pending rows, `relay_outbox --once`", "",
                "| relays | median s | median events/s | excl. startup | runs (s) | no dup / no loss |",
                "| ---: | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
        for n in (1, 2):
            x = r.get(f"relays_{n}")
            if x:
                out.append(
                    f"| {n} | {x['median_seconds']} | {x['median_events_per_s']} | {x['median_events_per_s_excl_startup']} | "
                    f"{', '.join(str(run['seconds']) for run in x['runs'])} | "
                    f"{all(run['no_duplicates_no_loss'] for run in x['runs'])} |"
                )
        out += ["", f"Process startup with an empty outbox: {r['startup_empty_s']} s.", ""]
    if "subscriber_drain" in results:
        out += ["### Subscriber drain (queued events, workers started)", "", "| subscriber | handled | finished after s | events/s |",
                "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for sub in lib.SUBSCRIBERS:
            s = results["subscriber_drain"].get(sub)
            if s:
                out.append(f"| {sub} | {s['handled']} / {s['of']} | {s['finished_after_s']} | {s['events_per_s']} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one round: a smoke test")
    parser.add_argument("--keep", action="store_true", help="keep the bench database and vhost afterwards")
    parser.add_argument(
        "--only", default="", help="comma list of: breakdown,healthy,hot,e2e,memory,down,relay (default all)"
    )
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda name: not only or name in only  # noqa: E731

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args.quick)
    started = time.monotonic()
    bench.results["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    status = 0
    try:
        bench.setup()
        if want("breakdown"):
            bench.breakdown()
        if want("healthy"):
            bench.orders_healthy()
        if want("hot"):
            bench.hot_contention()
        if want("e2e"):
            bench.end_to_end()
        if want("memory"):
            bench.memory()
        if want("down"):
            bench.broker_down()
        if want("relay"):
            bench.relay_throughput()
    except BaseException as exc:
        status = 1
        bench.results["aborted"] = repr(exc)
        log(f"aborted: {exc!r}")
        import traceback

        traceback.print_exc()
    finally:
        bench.stack.stop_all()
        bench.watch.close()
        bench.results["shared_broker_down_intervals"] = [
            [time.strftime("%H:%M:%S", time.localtime(a)), round((b or time.time()) - a, 1)]
            for a, b in bench.watch.down
        ]
        bench.scan_logs()
        if not args.keep:
            lib.drop_isolated_env()
        bench.results["duration_s"] = round(time.monotonic() - started, 1)
        bench.results.setdefault("machine", {})["loadavg_at_end"] = Path("/proc/loadavg").read_text().strip()
        RESULTS_DIR.mkdir(exist_ok=True)
        name = "quick" if args.quick else "latest"
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(bench.results, indent=1, default=str))
        (RESULTS_DIR / f"{name}.md").write_text(markdown(bench.results))
        log(f"done in {bench.results['duration_s']}s; results in {RESULTS_DIR / name}.json/.md; logs in {bench.logdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
