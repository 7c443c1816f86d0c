"""The marketplace as its Procfile runs it: sustained load, effects latency, faults, drain, task events."""

from __future__ import annotations

import shutil
import time

from bench import broker, data, profile
from bench.config import MARKER_SUBSCRIBER, MARKER_TASK, ORDER_SUBSCRIBERS, floor_queue_name
from bench.processes import cpu_seconds, log
from bench.scenarios import Context, paced, ramp, saturate, settle, sustained
from marketplace.events import topology


def _wait_effects(ctx: Context, started: float, ended: float) -> dict:
    """Effects latency of the window's events, once they are all in (bounded wait)."""
    deadline = time.monotonic() + ctx.params.settle_timeout
    while True:
        result = data.effects_latency(ctx.target, started, ended)
        if result["complete"] >= result["events"] or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def full_stack(ctx: Context) -> dict:
    """web + relay + recorder + one worker per subscriber: sustained orders/s, latency at 60%."""
    queues = broker.subscriber_queues()
    url = ctx.url(ctx.target.web_port, "/api/orders/")
    broker.purge(ctx.target, queues)
    ctx.stack.start_workers()
    result = sustained(ctx, url, queues)
    rate = 0.6 * result["sustained_ops"]
    at60 = paced(ctx, url, rate, ctx.params.paced_seconds, queues)
    at60["effects"] = _wait_effects(ctx, at60["started_at"], at60["ended_at"])
    result["at_60"] = at60
    settle(ctx, queues)
    result["ramp"] = ramp(ctx, url, result["sustained_ops"], queues)
    if ctx.params.profile_seconds and profile.available():
        result["profile"] = _profile(ctx, url, queues)
    result["seller_failing"] = _seller_failing(ctx, url, rate, queues)
    return result


def _profile(ctx: Context, url: str, queues: list[str]) -> dict:
    """py-spy on the web and every worker during a separate closed-loop window (so it does not
    disturb the measured ones)."""
    names = ["web", *[s.name for s in topology.SUBSCRIBERS], "relay"]
    pids = {name: ctx.stack.procs[name].pid for name in names if name in ctx.stack.procs}
    running = profile.start(pids, ctx.params.profile_seconds, ctx.target.logdir / "profiles")
    try:
        saturate(ctx, url, queues=queues, seconds=ctx.params.profile_seconds)
    finally:
        summary = profile.finish(running)
    settle(ctx, queues)
    return summary


def _seller_failing(ctx: Context, url: str, rate: float, queues: list[str]) -> dict:
    """Every seller's webhook points at the stub, which fails every call: orders must not fail."""
    seller = topology.subscriber_named("seller_notification")
    stub = f"http://127.0.0.1:{ctx.target.stub_port}"
    import httpx

    httpx.post(f"{stub}/_fail/{seller.name}", timeout=5).raise_for_status()
    data.set_seller_webhooks(ctx.target, f"{stub}/{seller.name}")
    try:
        result = paced(ctx, url, rate, ctx.params.paced_seconds, queues)
        others = [s.queue_name for s in topology.SUBSCRIBERS if s is not seller]
        result["other_subscribers_kept_up"] = settle(ctx, others, timeout=ctx.params.settle_timeout)
        # While the fault lasts: where retries wait, and which subscribers did the window's events.
        result["retrying_by_subscriber"] = broker.retrying(ctx.target)
        result["processed_by_subscriber"] = data.processed_by_subscriber(
            ctx.target, result["started_at"], result["ended_at"]
        )
    finally:
        data.set_seller_webhooks(ctx.target, "")
        httpx.post(f"{stub}/_heal", timeout=5)
        retry_queues = broker.retry_queue_names(ctx.target)
        broker.purge(ctx.target, [*retry_queues, seller.queue_name])  # leave nothing for later windows
    return result


def task_events_off(ctx: Context) -> dict:
    """The full stack again with Celery task events off (what Flower reads): their cost."""
    queues = broker.subscriber_queues()
    ctx.stack.stop(*[s.name for s in topology.SUBSCRIBERS])
    broker.purge(ctx.target, queues)
    ctx.stack.start_workers(settings="bench.floor.settings_no_events")
    try:
        return saturate(ctx, ctx.url(ctx.target.web_port, "/api/orders/"), queues=queues)
    finally:
        ctx.stack.stop(*[s.name for s in topology.SUBSCRIBERS])
        broker.purge(ctx.target, queues)


def drain(ctx: Context) -> dict:
    """Per subscriber: a backlog of N events, its worker started alone; vs N no-op Celery tasks."""
    n = ctx.params.drain_events
    queues = broker.subscriber_queues()
    ctx.stack.stop(*[s.name for s in topology.SUBSCRIBERS])
    broker.purge(ctx.target, queues)
    envelopes = data.drain_envelopes(ctx.target, n)
    ids = [e["id"] for e in envelopes]
    t0 = time.monotonic()
    broker.publish_envelopes(ctx.target, envelopes)
    result = {"events": n, "publish_seconds": round(time.monotonic() - t0, 2), "subscribers": {}}
    for sub in ORDER_SUBSCRIBERS:
        ctx.stack.start_workers(only=(sub,))
        try:
            result["subscribers"][sub.name] = _drain_one(
                ctx, lambda s=sub: data.processed_span(ctx.target, s.name, ids), sub.name
            )
        finally:
            ctx.stack.stop(sub.name)
    broker.purge(ctx.target, queues)
    # The no-op reference: the same number of Celery task messages on a floor queue of the same type.
    sub = ORDER_SUBSCRIBERS[0]
    shutil.rmtree(ctx.done_dir, ignore_errors=True)
    broker.purge(ctx.target, [floor_queue_name(sub)])
    broker.publish_noop_tasks(ctx.target, floor_queue_name(sub), n)
    ctx.stack.start_floor_workers(only=(sub,))
    try:
        result["noop"] = _drain_one(ctx, lambda: _noop_span(ctx, sub.name), f"floor-{sub.name}")
    finally:
        ctx.stack.stop(f"floor-{sub.name}")
        broker.purge(ctx.target, [floor_queue_name(sub)])
    # The exactly-once floor: our worker runtime claiming each event's marker, nothing else.
    ids = broker.publish_noop_tasks(ctx.target, floor_queue_name(sub), n, task=MARKER_TASK)
    ctx.stack.start_floor_workers(only=(sub,), app="bench.floor.marker", label="marker")
    try:
        result["marker"] = _drain_one(
            ctx, lambda: data.processed_span(ctx.target, MARKER_SUBSCRIBER, ids), f"marker-{sub.name}"
        )
    finally:
        ctx.stack.stop(f"marker-{sub.name}")
        broker.purge(ctx.target, [floor_queue_name(sub)])
    return result


def _noop_span(ctx: Context, name: str) -> tuple[int, float | None]:
    times = data.floor_done_times(ctx.done_dir, name)
    return len(times), (max(times) - min(times) if len(times) > 1 else None)


def _drain_one(ctx: Context, progress, process: str) -> dict:
    """Wait (bounded) until ``progress()`` reports every event done; rate from first to last effect,
    and the worker's CPU per event (from consuming to done)."""
    n = ctx.params.drain_events
    cpu_before = cpu_seconds(ctx.stack.procs[process].pids())
    deadline = time.monotonic() + ctx.params.drain_timeout
    done, span = progress()
    while done < n and time.monotonic() < deadline:
        time.sleep(0.5)
        done, span = progress()
    if done < n:
        log(f"drain stopped at {done}/{n} after {ctx.params.drain_timeout:.0f}s; rate from what drained")
    rate = (done - 1) / span if span else None
    cpu = (cpu_seconds(ctx.stack.procs[process].pids()) - cpu_before) * 1000 / max(done, 1)
    return {
        "done": done,
        "seconds": round(span or 0, 2),
        "per_second": round(rate, 1) if rate else None,
        "cpu_ms_per_event": round(cpu, 2),
    }
