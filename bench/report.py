"""The Markdown report: ratio table, absolute numbers, CPU and memory per process, profile."""

from __future__ import annotations

from pathlib import Path

from bench.plot import plot
from bench.ratios import _get, recorder_row, rows

# Sections that a benchmark of their own writes (`python -m bench --recorder`, bench.tokens,
# bench.rate_limits, bench.tracing, bench.soak), each replacing its own in place: a full run keeps them.
RECORDER_HEADING = "## Dead-letter recorder vs a plain consumer"
TOKENS_HEADING = "## API tokens: DRF's clear-text keys vs knox's digests"
RATE_LIMITS_HEADING = "## Rate limits: the cost of counting"
TRACING_HEADING = "## Tracing: the CPU an order costs with it on"
SOAK_HEADING = "## Memory over a long paced run"
SEPARATE_SECTIONS = (RECORDER_HEADING, TOKENS_HEADING, RATE_LIMITS_HEADING, TRACING_HEADING, SOAK_HEADING)
CPU_SCENARIOS = ("floor", "thin", "api_alone", "api_no_outbox", "full_stack", "task_events_off")
MARK = {True: "met", False: "**missed**", None: "not measured", "reference": "(reference)"}


def write(results: dict, output: Path) -> None:
    """The full report, keeping the separate sections of ``output`` that this run did not measure."""
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = output.read_text() if output.exists() else ""
    png = output.with_name(("benchmarks" if output.name == "benchmarks.md" else output.stem) + "-latency.png")
    plotted = plot(results, png)
    text = markdown(results, png.name if plotted else None)
    output.write_text(text)
    for heading in SEPARATE_SECTIONS:
        kept = section(previous, heading)
        if kept is not None and heading + "\n" not in text:
            replace_section(output, heading, kept)


def write_section(results: dict, output: Path) -> None:
    """Replace the recorder's section of ``output``, leaving the rest as the last full run wrote it."""
    lines = recorder_section(results) or [RECORDER_HEADING, "", "Not measured: see the errors.", ""]
    replace_section(output, RECORDER_HEADING, "\n".join(lines))


def section(text: str, heading: str) -> str | None:
    """The section of ``text`` under ``heading`` (up to the next "## "), if it has one."""
    start = text.find(heading + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start : end + 1]


def replace_section(output: Path, heading: str, text: str) -> None:
    """Put ``text`` (a section starting with ``heading``) into ``output`` in place of the old one,
    or before "## Machine" the first time (at the end if there is none)."""
    report = output.read_text() if output.exists() else "# Benchmarks\n\n"
    text = text.rstrip("\n") + "\n"
    old = section(report, heading)
    if old is not None:
        start = report.find(heading + "\n")
        following = report[start + len(old) :]
        report = report[:start] + text + ("\n" + following if following else "")
    else:
        at = report.find("## Machine\n")
        report = report.rstrip("\n") + "\n\n" + text if at < 0 else report[:at] + text + "\n" + report[at:]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report.rstrip("\n") + "\n")


def markdown(results: dict, png: str | None) -> str:
    m, checks = results["machine"], rows(results)
    lines = [
        "# Benchmarks",
        "",
        "Issue 8's targets, measured side by side in **one run** on this machine: the marketplace",
        "against floors the harness builds itself (`bench/floor/`: the thinnest DRF view with the same",
        "order SQL, and that view plus an on-commit confirmed publish to a fanout of its own consumed by",
        "three no-op Celery workers), and a request-response baseline calling three 50 ms downstreams",
        "inline. Absolute numbers depend on the machine and on whatever else runs on it; the ratios are",
        "the point.",
        "",
        "Reproduce (PostgreSQL and RabbitMQ with its management plugin on 127.0.0.1; the run uses database",
        "`marketplace_bench`, vhost `marketplace-bench` and ports 8100-8103 of its own, and stops every",
        "process it started):",
        "",
        "```sh",
        "bin/setup --bench                       # the locked bench extras (matplotlib, py-spy); `apt-get install wrk` for the closed loops",
        ".venv/bin/python -m bench               # about 20 minutes: this page and benchmarks-latency.png",
        ".venv/bin/python -m bench --quick       # under 2 minutes: bench/results/quick.md",
        "```",
        "",
        f"Command: `{results.get('command', '.venv/bin/python -m bench').strip()}` "
        f"({results.get('elapsed_seconds', '?')} s; load generator: {'wrk' if m.get('wrk') else 'Python threads'}"
        f" for closed loops with {results['params']['connections']} connections, Python threads for paced load).",
        f"Code measured: {(results.get('code') or {}).get('start', '?')} at the start, "
        f"{(results.get('code') or {}).get('end', '?')} at the end (other people change it while this runs).",
        "",
        "## Targets",
        "",
        "| target | goal | measured | result | absolute numbers of this run |",
        "| --- | --- | ---: | --- | --- |",
        *[f"| {r.target} | {r.goal} | {r.measured} | {MARK[r.met]} | {r.absolute} |" for r in checks],
        "",
    ]
    if png:
        lines += [f"![latency against offered load]({png})", ""]
    missed = [r for r in checks if r.met is False]
    if missed:
        lines += ["## What bounds the missed targets", "", *bounds(results), ""]
    lines += cpu_table(results) + memory_table(results) + scenario_table(results) + profile_section(results)
    lines += recorder_section(results)
    if results.get("errors"):
        lines += ["## Scenarios that failed in this run", ""]
        lines += [f"- `{name}`: {error.splitlines()[-1]}" for name, error in results["errors"].items()] + [""]
    lines += [
        "## Machine",
        "",
        f"- {m['cpus']} CPUs ({m['cpu']}), {m['memory_mib']} MiB RAM, Linux {m['kernel']}",
        f"- Python {m['python']}, RabbitMQ {m['rabbitmq']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- load average at start: {m.get('loadavg_start')}; at end: {m.get('loadavg_end')}",
        "- shared with other work (PostgreSQL and RabbitMQ serve other users too; their CPU rows include that)",
        "",
        "## How it is measured",
        "",
        *METHOD,
    ]
    return "\n".join(lines) + "\n"


METHOD = [
    "- Every process is started from the `Procfile` command (bench database, vhost and ports), in its own",
    "  process group, and stopped at the end (SIGTERM, then SIGKILL) even on failure or Ctrl-C.",
    "- **Sustained orders/s**: a closed-loop window (wrk, 16 connections) gives a first estimate: orders",
    "  answered 2xx minus the largest growth of any subscriber queue, per second. Under closed-loop",
    "  saturation the web takes CPU the subscribers need, so paced probes then raise it in x1.25 steps",
    "  while a window is served in full and on time and no queue grows by more than half a second of",
    "  events; the highest such rate is the sustained rate (floor and marketplace alike).",
    "- **At 60%**: an open-loop paced window at 60% of that; latency commit → all three effects is",
    "  `max(ProcessedEvent.processed_at) - OutboxEvent.created_at` per event (no-op floor: task done time",
    "  minus on-commit time); the backlog must not grow.",
    "- **API alone**: subscribers stopped, relay running; the outbox + publish cost compares it with the same",
    "  API whose `enqueue_event` is switched off (`bench/floor/wsgi_no_outbox.py`). The thin view, the API and",
    "  the API without outbox run in alternation, three windows each, and each keeps its median window.",
    "- **Baseline**: `bench/floor/views.py:BaselineOrderApi`, the downstream stub (`bench/stub.py`) sleeps",
    "  50 ms per call; for the failure case the stub fails every seller call and every seller's webhook URL",
    "  points at it (the event-driven seller subscriber retries and dead-letters; orders are unaffected).",
    "- **Drain**: N events published to the fanout with the workers stopped, then each worker started alone;",
    "  rate from its first to its last committed effect, against N no-op Celery tasks on a quorum queue,",
    "  and against the exactly-once floor: N tasks run by the marketplace's own worker (its Celery app and",
    "  settings, task events on) that only claim the event's marker in a transaction (`bench/floor/marker.py`).",
    "- **CPU ms per order**: utime+stime (+ reaped children's) from /proc of each process and its children",
    "  over the closed-loop window, divided by its orders. **RSS** summed over each process and its children.",
    "- **Noise**: one 20 s window per figure, on 2 cores shared with other work, with the paced load",
    "  generator (Python threads) on the same cores: expect +-20% on a single ratio between runs. Compare",
    "  figures of the same run; the CPU per order is steadier than throughput.",
]


def bounds(results: dict) -> list[str]:
    out = []
    cpu = _get(results, "full_stack", "cpu_ms_per_order") or {}
    own = {k: v for k, v in cpu.items() if "shared" not in k and v > 0}
    if own:
        total = sum(own.values())
        top = sorted(own.items(), key=lambda kv: -kv[1])[:4]
        out.append(
            f"- **CPU per order.** The full stack spends {total:.1f} ms of CPU per order in its own processes "
            f"(floor: {sum(v for k, v in (_get(results, 'floor', 'cpu_ms_per_order') or {}).items() if 'shared' not in k):.1f} ms); "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in top)
            + f". On {results['machine']['cpus']} cores that caps the whole system near "
            f"{1000 * results['machine']['cpus'] / total:.0f} orders/s before RabbitMQ and PostgreSQL take their share."
        )
    failed_probe = next((p for p in _get(results, "full_stack", "probes") or [] if not p["kept_up"]), None)
    if failed_probe:
        out.append(
            f"- **Sustained rate.** At {failed_probe['offered_rps']}/s offered the stack no longer kept up "
            f"(answered {failed_probe['ok_rps']}/s, API p50 {failed_probe['p50_ms']} ms, queue growth "
            f"{failed_probe['backlog_growth']})."
        )
    growth = _get(results, "full_stack", "backlog_growth") or {}
    if growth and max(growth.values()) > 0:
        worst = max(growth, key=growth.get)
        out.append(
            f"- **Who falls behind under saturation**: `{worst}` grew by {growth[worst]} messages in the window "
            f"(all queues: {growth})."
        )
    api_cpu = (_get(results, "api_alone", "cpu_ms_per_order") or {}).get("web")
    thin_cpu = (_get(results, "thin", "cpu_ms_per_order") or {}).get("floor-web")
    no_outbox_cpu = (_get(results, "api_no_outbox", "cpu_ms_per_order") or {}).get("web-no-outbox")
    if api_cpu and thin_cpu:
        split = (
            f" = {thin_cpu:.1f} (the thin view) + {no_outbox_cpu - thin_cpu:.1f} (token auth, idempotency key, full "
            f"validation, the whole order in the response, metrics) + {api_cpu - no_outbox_cpu:.1f} (outbox row and publish)"
            if no_outbox_cpu
            else ""
        )
        out.append(
            f"- **API alone**: the web processes spend {api_cpu:.1f} ms CPU per order{split}; 0.8x of the thin "
            f"view would leave {thin_cpu / 0.8:.1f} ms for all of it."
        )
    marker, noop = _get(results, "drain", "marker", "per_second"), _get(results, "drain", "noop", "per_second")
    if marker and noop:
        out.append(
            f"- **Drains**: the marketplace's worker runtime doing nothing but claim each event's marker in a "
            f"transaction (what exactly-once needs of every subscriber) drains {marker / noop:.2f}x as fast as "
            "a no-op Celery task; no subscriber can drain faster than that."
        )
    out += _drain_cpu_split(results)
    prof = _get(results, "full_stack", "profile") or {}
    for name, p in prof.items():
        if p.get("self_by_package"):
            out.append(
                f"- **{name}** (py-spy, CPU by package): "
                + ", ".join(f"{pkg} {pct}%" for pkg, pct in p["self_by_package"][:6])
                + "; in our code: "
                + ", ".join(f"`{f}` {pct}%" for f, pct in p.get("inclusive_project", [])[1:4])
            )
    return out or ["- (no CPU or profile data in this run)"]


def _drain_cpu_split(results: dict) -> list[str]:
    """Each drained subscriber's worker CPU per event, split by the two floors: what a no-op Celery
    task costs, what our runtime and the exactly-once marker add, and what is left to the handler."""
    noop = _get(results, "drain", "noop", "cpu_ms_per_event")
    marker = _get(results, "drain", "marker", "cpu_ms_per_event")
    subscribers = _get(results, "drain", "subscribers") or {}
    if not (noop and marker and subscribers):
        return []
    parts = [
        f"{name} {d['cpu_ms_per_event']:.2f} ms = {noop:.2f} + {marker - noop:.2f} + {d['cpu_ms_per_event'] - marker:.2f}"
        for name, d in subscribers.items()
        if d.get("cpu_ms_per_event")
    ]
    return [
        "- **Where a drained event's worker CPU goes** (no-op Celery task + our runtime and the marker claim + "
        "the handler's own work): " + "; ".join(parts) + "."
    ]


def cpu_table(results: dict) -> list[str]:
    present = [s for s in CPU_SCENARIOS if _get(results, s, "cpu_ms_per_order")]
    if not present:
        return []
    names = sorted({n for s in present for n, v in _get(results, s, "cpu_ms_per_order").items() if v > 0.05})
    out = [
        "## CPU ms per order, per process",
        "",
        "| process | " + " | ".join(present) + " |",
        "| --- |" + " ---: |" * len(present),
    ]
    for name in names:
        cells = [_get(results, s, "cpu_ms_per_order").get(name) for s in present]
        out.append(f"| {name} | " + " | ".join("" if c is None or c < 0.05 else f"{c:.2f}" for c in cells) + " |")
    return [*out, ""]


def memory_table(results: dict) -> list[str]:
    rss = {**(_get(results, "floor", "rss_mib") or {}), **(_get(results, "full_stack", "rss_mib") or {})}
    if not rss:
        return []
    out = ["## Memory (RSS, MiB, process and its children, under load)", "", "| process | RSS MiB |", "| --- | ---: |"]
    out += [f"| {k} | {v:.0f} |" for k, v in sorted(rss.items())]
    return [*out, ""]


def scenario_table(results: dict) -> list[str]:
    out = [
        "## Every window of this run",
        "",
        "| scenario | window | offered/s | ok/s | failed | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in results.get("scenarios", {}).items():
        for label, w in (
            ("closed loop", s),
            ("paced 60%", s.get("at_60")),
            ("seller failing", s.get("seller_failing")),
        ):
            if isinstance(w, dict) and "ok_rps" in w:
                out.append(
                    f"| {name} | {label} | {w.get('offered_rps', '')} | {w['ok_rps']} | {w['failed']} | "
                    f"{w['p50_ms']} | {w['p99_ms']} |"
                )
    return [*out, ""]


def profile_section(results: dict) -> list[str]:
    prof = _get(results, "full_stack", "profile")
    if not prof:
        return ["## Profile", "", "py-spy was not available or not run.", ""]
    out = ["## Profile (py-spy, full stack under closed-loop load)", ""]
    for name, p in prof.items():
        if "self" not in p:
            out.append(f"- {name}: {p.get('error')}")
            continue
        out += [f"**{name}** ({p['samples']} samples): CPU by package (self time)", ""]
        out += [", ".join(f"{pkg} {pct}%" for pkg, pct in p.get("self_by_package", [])), "", "top self time:", ""]
        out += [f"- {pct}% `{f}`" for f, pct in p["self"]]
        out += (
            ["", "project functions, inclusive:", ""] + [f"- {pct}% `{f}`" for f, pct in p["inclusive_project"]] + [""]
        )
    return out


def recorder_section(results: dict) -> list[str]:
    """The dead-letter recorder's drains against the plain consumer's, rep by rep, and its profile."""
    rec = _get(results, "recorder")
    if not rec or not rec.get("reps"):
        return []
    row, m, code = recorder_row(results), results["machine"], results.get("code") or {}
    out = [
        RECORDER_HEADING,
        "",
        f"`manage.py record_dead_letters` (the Procfile's recorder) draining a backlog of {rec['events']} dead letters",
        "against a plain kombu consumer (`bench/floor/dead_letter_consumer.py`: basic.consume with the recorder's",
        "prefetch, one INSERT in its own transaction per message, then the ack) draining the same messages from a",
        "queue of its own. Measured by "
        f"`{results.get('command', '.venv/bin/python -m bench').strip()}` ({results.get('elapsed_seconds', '?')} s); "
        f"code {code.get('start', '?')} at the start, {code.get('end', '?')} at the end; load average "
        f"{' '.join(m.get('loadavg_start', '?').split()[:3])} at the start, {' '.join(m.get('loadavg_end', '?').split()[:3])} at the end.",
        "Only this section again (about 6 minutes; the full run includes it): `.venv/bin/python -m bench --recorder`.",
        "",
        "| target | goal | measured | result | absolute numbers of this run |",
        "| --- | --- | ---: | --- | --- |",
        f"| {row.target} | {row.goal} | {row.measured} | {MARK[row.met]} | {row.absolute} |",
        "",
        "| rep | drain | recorded | seconds from start | per second | steady per second | process CPU ms per dead letter "
        "| PostgreSQL ms | RabbitMQ ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, rep in enumerate(rec["reps"], 1):
        for name in rep["order"]:
            d = rep[name]
            shared = d.get("shared_cpu_ms_per_event") or {}
            out.append(
                f"| {i} | {name} | {d['done']} | {d['seconds']} | {d['per_second']} | {d.get('steady_per_second')} | "
                f"{d['cpu_ms_per_event']} | {shared.get('postgres')} | {shared.get('rabbitmq')} |"
            )
    out += [
        "",
        f"- **The dead letters** (`bench/dead_letters.py`), all of `{rec.get('subscriber')}`, each for an order.placed "
        f"event of its own: {rec.get('with_failure_headers')} as the subscriber gives up after its retries (its Celery task "
        "message with the envelope, its headers and `failure_headers(...)` of a real chained exception, traceback "
        f"{rec.get('traceback_chars')} characters, published to the dead-letter exchange with its `.dead` key); "
        f"{rec.get('dead_lettered_by_rabbitmq')} dead-lettered by RabbitMQ itself (raw envelopes of "
        f"{rec.get('envelope_bytes')} bytes returned unacknowledged until the subscriber queue's delivery limit: "
        "`x-death` headers, no failure headers). Publisher-confirmed in batches of 500 "
        f"({rec.get('publish_seconds')} s for the last rep's).",
        f"- **Prefetch** {rec.get('prefetch')} for both ({rec.get('prefetch_source')}).",
        "- **Timing**: from the consumer process's start (its startup included) until its queue is empty and all its "
        "rows committed; *steady* is from the first row seen to the last (polled every 0.1 s). The two drains "
        "alternate which goes first from one rep to the next; the ratio is per rep, and the target uses their median.",
        "- **CPU**: utime+stime of the whole consumer process (startup included); PostgreSQL and RabbitMQ over the "
        "drain (shared with other work on this machine).",
        "",
    ]
    out += _recorder_profile(rec.get("profile"))
    return out


def _recorder_profile(p: dict | None) -> list[str]:
    if not p:
        return []
    if "self" not in p:
        return [f"Profile of the recorder: {p.get('error')}", ""]
    # py-spy samples at 200 Hz, only while the recorder's thread holds the GIL: Python CPU time.
    per_event = p["samples"] / 200 * 1000 / max(p.get("recorded_while_profiled") or 0, 1)
    out = [
        f"**Profile of the recorder** (py-spy, {p['samples']} samples at 200 Hz of the thread holding the GIL, "
        f"i.e. {per_event:.2f} ms of Python CPU per dead letter, while it recorded {p.get('recorded_while_profiled', '?')} "
        f"dead letters in {p.get('seconds', '?')} s). CPU by package (self time): "
        + ", ".join(f"{pkg} {pct}%" for pkg, pct in p.get("self_by_package", [])),
        "",
    ]
    if p.get("focus"):
        out += [
            "| where a dead letter's Python CPU goes (inclusive) | share | ms per dead letter |",
            "| --- | ---: | ---: |",
        ]
        out += [f"| {what} | {pct}% | {pct / 100 * per_event:.3f} |" for what, pct in p["focus"]]
        out += [
            "",
            "(Shares are of all samples; a stack py-spy could not unwind up to the command's loop counts in none of",
            "the rows below that loop, so they are lower bounds.)",
            "",
        ]
    out += ["top self time:", ""] + [f"- {pct}% `{f}`" for f, pct in p["self"]] + [""]
    return out
