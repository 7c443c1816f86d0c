"""Issue 8's targets, checked against one run's results: (target, measured, met, absolute numbers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    target: str
    goal: str
    measured: str
    met: bool | str | None  # None: not measured in this run; "reference": a bound, not a target
    absolute: str


def _get(results: dict, *path, default=None):
    node = results.get("scenarios", {})
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return default
        node = node[key]
    return node


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fmt(value, suffix="") -> str:
    return "n/a" if value is None else f"{value:g}{suffix}"


def rows(results: dict) -> list[Row]:
    g = lambda *p: _get(results, *p)  # noqa: E731
    out = []

    full, floor = g("full_stack", "sustained_ops"), g("floor", "sustained_ops")
    r = _ratio(full, floor)
    out.append(
        Row(
            "Whole system sustained orders/s vs the no-op floor",
            "≥ 0.5 x (stretch 0.7)",
            _fmt(r, "x"),
            None if r is None else r >= 0.5,
            f"system {_fmt(full)}/s, floor {_fmt(floor)}/s (closed loop alone: "
            f"{_fmt(g('full_stack', 'closed_loop_sustained_ops'))}/s vs {_fmt(g('floor', 'closed_loop_sustained_ops'))}/s)"
            + (" (stretch met)" if r and r >= 0.7 else ""),
        )
    )

    p99 = g("full_stack", "at_60", "effects", "p99_ms")
    growth = g("full_stack", "at_60", "backlog_growth") or {}
    rate = g("full_stack", "at_60", "offered_rps") or 0
    no_growth = bool(growth) and max(growth.values()) <= max(5, rate * 0.5)
    floor_p99 = g("floor", "at_60", "done", "p99_ms")
    out.append(
        Row(
            "Commit → all three effects committed, p99 at 60% load, no backlog growth",
            "≤ 50 ms (stretch 20 ms)",
            _fmt(p99, " ms"),
            None if p99 is None else (p99 <= 50 and no_growth),
            f"p50 {_fmt(g('full_stack', 'at_60', 'effects', 'p50_ms'), ' ms')} at {_fmt(rate)}/s; "
            f"backlog growth {max(growth.values(), default=0)}; floor p99 {_fmt(floor_p99, ' ms')}",
        )
    )

    api, thin = g("api_alone", "ok_rps"), g("thin", "ok_rps")
    r = _ratio(api, thin)
    out.append(
        Row(
            "API alone (subscribers stopped) vs the thinnest view with the same SQL",
            "≥ 0.8 x",
            _fmt(r, "x"),
            None if r is None else r >= 0.8,
            f"API {_fmt(api)}/s, thin view {_fmt(thin)}/s (median of windows {g('api_alone', 'rounds_ok_rps')} vs "
            f"{g('thin', 'rounds_ok_rps')})",
        )
    )

    bare = g("api_no_outbox", "ok_rps")
    cost = None if not bare or api is None else round(1 - api / bare, 3)
    out.append(
        Row(
            "Outbox + publish share of the API's throughput",
            "≤ 10%",
            "n/a" if cost is None else f"{cost * 100:.1f}%",
            None if cost is None else cost <= 0.10,
            f"API {_fmt(api)}/s with, {_fmt(bare)}/s without outbox row and publish (windows "
            f"{g('api_no_outbox', 'rounds_ok_rps')})",
        )
    )

    api_p50, base_p50 = g("full_stack", "at_60", "p50_ms"), g("baseline", "at_60", "p50_ms")
    r = _ratio(api_p50, base_p50)
    out.append(
        Row(
            "API p50 vs request-response baseline p50 (each at 60% of its load)",
            "≤ 0.1 x",
            _fmt(r, "x"),
            None if r is None else r <= 0.1,
            f"API {_fmt(api_p50, ' ms')}, baseline {_fmt(base_p50, ' ms')}",
        )
    )

    ev, base = g("full_stack", "seller_failing"), g("baseline", "seller_failing")
    met = None if ev is None else ev["failed"] == 0 and (base is None or base["ok"] == 0)
    retrying = (ev or {}).get("retrying_by_subscriber") or {}
    done = (ev or {}).get("processed_by_subscriber") or {}
    out.append(
        Row(
            "Seller downstream failing 100%: failed orders",
            "0 (baseline fails all)",
            "n/a" if ev is None else f"{ev['failed']} of {ev['requests']}",
            met,
            f"baseline: {'n/a' if base is None else str(base['failed']) + ' of ' + str(base['requests'])} failed; "
            f"event-driven API p50 {_fmt((ev or {}).get('p50_ms'), ' ms')}; of its {done.get('events', '?')} events, "
            + ", ".join(f"{k} did {v}" for k, v in done.items() if k != "events")
            + "; waiting in retry queues: "
            + ", ".join(f"{k} {v}" for k, v in retrying.items()),
        )
    )

    subs, noop = g("drain", "subscribers") or {}, g("drain", "noop", "per_second")
    for name, d in subs.items():
        r = _ratio(d.get("per_second"), noop)
        out.append(
            Row(
                f"Drain of a {g('drain', 'events')}-event backlog: {name}",
                "≥ 0.5 x no-op Celery drain",
                _fmt(r, "x"),
                None if r is None else r >= 0.5,
                f"{_fmt(d.get('per_second'))}/s vs no-op {_fmt(noop)}/s ({d.get('done')} drained); worker CPU "
                f"{_fmt(d.get('cpu_ms_per_event'), ' ms')} vs {_fmt(g('drain', 'noop', 'cpu_ms_per_event'), ' ms')} per event",
            )
        )
    marker = g("drain", "marker") or {}
    if marker:
        r = _ratio(marker.get("per_second"), noop)
        out.append(
            Row(
                "Drain, exactly-once floor: our worker runtime claiming each event's marker, no handler",
                "reference: what bounds the drains",
                _fmt(r, "x"),
                "reference",
                f"{_fmt(marker.get('per_second'))}/s vs no-op {_fmt(noop)}/s; worker CPU "
                f"{_fmt(marker.get('cpu_ms_per_event'), ' ms')} per event",
            )
        )

    if g("recorder", "reps"):
        out.append(recorder_row(results))

    # Both closed-loop windows, same length: like with like.
    on = g("full_stack", "closed_loop_sustained_ops") or g("full_stack", "sustained_ops")
    off = g("task_events_off", "sustained_ops")
    cpu_on = _total_cpu(g("full_stack", "cpu_ms_per_order"))
    cpu_off = _total_cpu(g("task_events_off", "cpu_ms_per_order"))
    r = None if not off or on is None else round(1 - on / off, 3)
    out.append(
        Row(
            "Celery task events (Flower) cost",
            "measured, events stay on",
            "n/a" if not cpu_on or cpu_off is None else f"{(cpu_on - cpu_off) / cpu_on * 100:+.1f}% CPU per order",
            None if r is None else True,
            f"CPU {_fmt(cpu_on, ' ms')} per order with task events, {_fmt(cpu_off, ' ms')} without; closed-loop "
            f"sustained {_fmt(on)}/s with, {_fmt(off)}/s without (throughput is the noisier of the two)",
        )
    )
    return out


def recorder_row(results: dict) -> Row:
    """The dead-letter recorder's drain against a plain consumer's (bench/recorder.py)."""
    rec = _get(results, "recorder") or {}
    reps = rec.get("reps") or []
    ratio = rec.get("ratio")
    rates = "; ".join(
        f"rep {i}: {_fmt(r['recorder']['per_second'])}/s vs {_fmt(r['baseline']['per_second'])}/s = {_fmt(r['ratio'], 'x')}"
        for i, r in enumerate(reps, 1)
    )
    cpu = "; ".join(
        f"{_fmt(r['recorder']['cpu_ms_per_event'], ' ms')} vs {_fmt(r['baseline']['cpu_ms_per_event'], ' ms')}"
        for r in reps
    )
    return Row(
        f"Drain of {rec.get('events')} dead letters: recorder vs a plain consumer (prefetch {rec.get('prefetch')})",
        f"≥ {rec.get('target_ratio', 0.5)} x",
        _fmt(ratio, "x") + (" (median of reps)" if len(reps) > 1 else ""),
        None if ratio is None else ratio >= rec.get("target_ratio", 0.5),
        f"{rates}; process CPU per dead letter {cpu}",
    )


def _total_cpu(cpu: dict | None) -> float | None:
    if not cpu:
        return None
    return round(sum(v for k, v in cpu.items() if "shared" not in k), 1)
