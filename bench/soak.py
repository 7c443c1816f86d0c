"""``python -m bench.soak [--minutes M] [--rate R] [--sample S] [--write]``: memory over a long paced
run: does any process of the system grow?

The Procfile's web, relay, recorder and one worker per subscriber (production settings,
bench/config.py), on a database and a vhost of their own, take a steady paced load of orders (R per
second, default 10) for M minutes (default 10). Every S seconds (default 30) the run reads each
process's RSS (with its children: gunicorn's workers, a Celery worker's pool process) and the depth
of every subscriber queue. The first minute is warm-up (imports, caches, connection pools, the ORM's
and the template engine's lazily built state); a process **grows** when its RSS at the end is above
its RSS after the warm-up by more than 5% and more than 5 MiB, the noise of the allocator and the
garbage collector over a run. A subscriber queue that keeps a backlog at the end grows too. The
report also gives each process's rate of growth over the run's second half and names those still
rising faster than 0.2 MiB a minute (12 MiB an hour) when the run ends: under the threshold, but
for a longer run to settle.

--write puts the result into docs/benchmarks.md as its own section (replaced in place on the next
run, added at the end the first time); raw numbers go to bench/results/soak.json, and
``--from-json bench/results/soak.json`` renders the section again from them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import broker, data, load, report
from bench.config import QUICK, ROOT, Target
from bench.processes import Stack, log, wait_http
from bench.run import code_version, loadavg

TARGET = Target.named("soak", 8140)  # 8130-8133 are bench.trace_picture's
REPORT = ROOT / "docs" / "benchmarks.md"
RAW = ROOT / "bench" / "results" / "soak.json"
WARM_UP_SECONDS = 60.0
GROWTH_ALLOWED_MIB = 5.0
GROWTH_ALLOWED_SHARE = 0.05
STILL_RISING_MIB_PER_MINUTE = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the paced run (default 10)")
    parser.add_argument("--rate", type=float, default=10.0, help="orders per second (default 10)")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--write", action="store_true", help=f"put the section into {REPORT.relative_to(ROOT)}")
    parser.add_argument("--from-json", type=Path, help="only render the section again from a run's raw numbers")
    args = parser.parse_args(argv)

    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        results = summarize(
            raw["samples"], **{key: raw[key] for key in ("orders", "minutes", "rate", "sample_seconds")}
        )
        results["run"] = raw.get("run", {})
    else:
        begun = {"date": time.strftime("%Y-%m-%d"), "code": code_version(), "loadavg": loadavg()}
        results = soak(TARGET, minutes=args.minutes, rate=args.rate, sample_seconds=args.sample)
        results["run"] = {**begun, "loadavg_at_end": loadavg()}
        RAW.parent.mkdir(parents=True, exist_ok=True)
        RAW.write_text(json.dumps(results, indent=1) + "\n")
    section = markdown(results)
    print(section)
    if args.write:
        report.replace_section(REPORT, report.SOAK_HEADING, section)
        log(f"wrote {REPORT}")
    return 0 if not results["growing"] else 1


def soak(target: Target, *, minutes: float, rate: float, sample_seconds: float) -> dict:
    log(f"database {target.db_name}, vhost {target.vhost}: migrating and seeding")
    broker.create_vhost(target)
    workload = data.prepare(target, QUICK)
    data.set_seller_webhooks(target, "")  # sellers are told by email (bench.mail): no webhook to wait on
    queues = broker.subscriber_queues()
    broker.purge(target, queues)
    stack = Stack(target)
    url = f"http://127.0.0.1:{target.web_port}/api/orders/"
    samples: list[dict] = []
    orders = {"ok": 0, "failed": 0}
    try:
        web = stack.start_web("web", target.web_port, wait=False)
        stack.start_procfile("relay")
        stack.start_procfile("recorder")
        stack.start_workers()
        wait_http(web, target.web_port, "/api/products/?page_size=1")
        started = time.monotonic()
        deadline = started + minutes * 60
        while (left := deadline - time.monotonic()) >= 1.0:
            window = load.paced(url, workload, rate=rate, seconds=min(sample_seconds, left))
            orders["ok"] += window["ok"]
            orders["failed"] += window["failed"]
            stack.check_alive()
            samples.append(
                {
                    "seconds": round(time.monotonic() - started, 1),
                    "rss_mib": stack.rss(),
                    "backlog": broker.depths(target, queues),
                    "p99_ms": window["p99_ms"],
                }
            )
            log(f"{samples[-1]['seconds']:.0f}s: {samples[-1]['rss_mib']}")
    finally:
        stack.stop_all()
    return summarize(samples, orders=orders, minutes=minutes, rate=rate, sample_seconds=sample_seconds)


def summarize(samples: list[dict], *, orders: dict, minutes: float, rate: float, sample_seconds: float) -> dict:
    """Per process: RSS after the warm-up, at the end and at its peak; whether it grew; how fast it
    still rose over the second half of the run."""
    warm = next((s for s in samples if s["seconds"] >= WARM_UP_SECONDS), samples[0])
    end = samples[-1]
    half = next(s for s in samples if s["seconds"] >= end["seconds"] / 2)
    minutes_of_second_half = max(end["seconds"] - half["seconds"], 1.0) / 60
    processes = {}
    for name in end["rss_mib"]:
        after_warm_up, at_end = warm["rss_mib"].get(name, 0.0), end["rss_mib"][name]
        growth = at_end - after_warm_up
        processes[name] = {
            "after_warm_up": after_warm_up,
            "end": at_end,
            "peak": max(s["rss_mib"].get(name, 0.0) for s in samples),
            "growth_mib": round(growth, 1),
            "second_half_mib_per_minute": round((at_end - half["rss_mib"].get(name, 0.0)) / minutes_of_second_half, 2),
            "grows": growth > GROWTH_ALLOWED_MIB and growth > GROWTH_ALLOWED_SHARE * after_warm_up,
        }
    backlog_at_end = {queue: depth for queue, depth in end["backlog"].items() if depth}
    return {
        "minutes": minutes,
        "rate": rate,
        "sample_seconds": sample_seconds,
        "orders": orders,
        "processes": processes,
        "backlog_at_end": backlog_at_end,
        "max_backlog": max((max(s["backlog"].values(), default=0) for s in samples), default=0),
        "growing": sorted([name for name, p in processes.items() if p["grows"]] + list(backlog_at_end)),
        "still_rising": sorted(
            name
            for name, p in processes.items()
            if not p["grows"] and p["second_half_mib_per_minute"] > STILL_RISING_MIB_PER_MINUTE
        ),
        "samples": samples,
    }


def markdown(results: dict) -> str:
    run = results.get("run", {})
    verdict = (
        "**No process grows**, and no subscriber queue keeps a backlog."
        if not results["growing"]
        else f"**Growing: {', '.join(results['growing'])}.**"
    )
    rising = results.get("still_rising", [])
    if rising:
        rates = ", ".join(f"{name} {results['processes'][name]['second_half_mib_per_minute']:+.2f}" for name in rising)
        verdict += (
            f" **Still rising** at the end, under the threshold, faster than {STILL_RISING_MIB_PER_MINUTE:g}"
            f" MiB/minute: {rates} MiB/minute over the second half."
        )
    lines = [
        report.SOAK_HEADING,
        "",
        "`python -m bench.soak --write` (production settings): the Procfile's web, relay, recorder and one worker",
        f"per subscriber take {results['rate']:g} orders/s for {results['minutes']:g} minutes"
        f" ({results['orders']['ok']} orders placed, {results['orders']['failed']} failed); every",
        f"{results['sample_seconds']:g} s the run reads each process's RSS, its children included (gunicorn's",
        "workers, a Celery worker's pool process), and every subscriber queue's depth. The first minute is",
        "warm-up; a process grows when its RSS at the end is above its RSS after the warm-up by more than 5%",
        f"and more than {GROWTH_ALLOWED_MIB:g} MiB. {verdict} Deepest subscriber queue at any sample:"
        f" {results['max_backlog']} message(s).",
        "",
        f"Measured {run.get('date', '?')}, code {run.get('code', '?')}; load average {run.get('loadavg', '?')} at the start,"
        f" {run.get('loadavg_at_end', '?')} at the end.",
        "",
        "| process | RSS MiB after warm-up | at the end | peak | growth MiB | second half, MiB/minute |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in sorted(results["processes"].items()):
        flag = " **grows**" if p["grows"] else (" still rising" if name in rising else "")
        lines.append(
            f"| {name} | {p['after_warm_up']:.1f} | {p['end']:.1f} | {p['peak']:.1f} | {p['growth_mib']:+.1f}{flag} "
            f"| {p['second_half_mib_per_minute']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
