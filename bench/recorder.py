"""The dead-letter recorder against a plain consumer: a backlog of N dead letters drained by the
Procfile's ``manage.py record_dead_letters`` and by bench/floor/dead_letter_consumer.py.

Each rep publishes N fresh dead letters (bench/dead_letters.py); the dead-letter exchange routes a
copy of each to the recorder's queue and to the baseline's, so both drain the same messages. The
two drains alternate which goes first from one rep to the next. Each is timed from its process's
start until its queue is empty and N rows committed (the recorder: N FailedEvent rows; the
baseline: N rows of its table).
"""

from __future__ import annotations

import statistics
import time

from bench import broker, data, profile
from bench.config import DEAD_LETTER_FLOOR_QUEUE, DEAD_LETTER_FLOOR_TABLE, DEAD_LETTER_SUBSCRIBER, PYTHON
from bench.processes import Proc, cpu_seconds, log, system_pids
from bench.scenarios import Context
from marketplace.events import topology

TARGET_RATIO = 0.5
FAILED_EVENTS = "events_failedevent"
POLL_SECONDS = 0.1
# Where a recorded dead letter's time goes: (what, frame labels that start it), for the profile.
FOCUS = [
    ("the command's consuming loop, all of it", ("Command._run (marketplace/events/management/commands/",)),
    ("Command._record(): one burst read, written, acknowledged", ("Command._record (",)),
    ("read_failure(): the message read into the row's fields", ("read_failure (",)),
    ("- jsonable_headers(): headers made JSON-safe", ("jsonable_headers (",)),
    ("- json_text(): the payload written once and checked", ("json_text (",)),
    ("- decoded_envelope(): the body parsed", ("decoded_envelope (",)),
    ("- grouping_fields(): message pattern and group key", ("grouping_fields (",)),
    ("write_failures(): the burst's transaction, one upsert each", ("write_failures (",)),
    ("- BEGIN / COMMIT (atomic)", ("Atomic.__enter__ (", "Atomic.__exit__ (")),
    ("logger.error(), one line per dead letter", ("Logger.error (",)),
    ("mail_admins, one email per failure group and window", ("mail_admins (",)),
    ("any json encoding or decoding", ("dumps (json/", "loads (json/")),
    ("any SQL statement sent (psycopg Cursor.execute)", ("Cursor.execute (psycopg/",)),
    ("the acknowledgement (Message.ack)", ("Message.ack (",)),
]


def recorder(ctx: Context) -> dict:
    """Dead letters per second and CPU per dead letter, recorder vs plain consumer, per rep."""
    params, subscriber = ctx.params, topology.subscriber_named(DEAD_LETTER_SUBSCRIBER)
    was_running = "recorder" in ctx.stack.procs
    # Nothing else may consume the dead letters, or the subscriber queue that crashes some of them.
    ctx.stack.stop("recorder", *[s.name for s in topology.SUBSCRIBERS])
    queues = [topology.RECORDER_QUEUE_NAME, subscriber.dead_letter_queue_name, subscriber.queue_name]
    broker.declare_dead_letter_floor(ctx.target)
    broker.purge(ctx.target, [*queues, DEAD_LETTER_FLOOR_QUEUE])
    data.create_dead_letter_table(ctx.target)
    result: dict = {"events": params.recorder_events, "subscriber": subscriber.name, "reps": []}
    try:
        for rep in range(params.recorder_reps):
            batch = _publish(ctx)
            result.update({k: v for k, v in batch.items() if k != "ids"})
            order = ("recorder", "baseline") if rep % 2 == 0 else ("baseline", "recorder")
            drains = {name: _DRAINS[name](ctx, batch) for name in order}
            ratio = _ratio(drains["recorder"]["per_second"], drains["baseline"]["per_second"])
            result["reps"].append({"order": list(order), **drains, "ratio": ratio})
            log(
                f"recorder rep {rep + 1}: recorder {drains['recorder']['per_second']}/s, "
                f"baseline {drains['baseline']['per_second']}/s, ratio {ratio}"
            )
            broker.purge(ctx.target, [subscriber.dead_letter_queue_name])  # the .dead copies: nobody reads them here
        ratios = [r["ratio"] for r in result["reps"] if r["ratio"] is not None]
        result["ratio"] = round(statistics.median(ratios), 3) if ratios else None
        result["target_ratio"] = TARGET_RATIO
        # Where the recorder's time goes, met or not (the full run's profile window; not --quick).
        if params.profile_seconds:
            if profile.available():
                result["profile"] = _profile(ctx)
            else:
                log("py-spy not installed: no profile of the recorder (bin/setup --bench)")
    finally:
        broker.delete_queues(ctx.target, [DEAD_LETTER_FLOOR_QUEUE])
        broker.purge(ctx.target, queues)
        if was_running:
            ctx.stack.start_procfile("recorder")
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _publish(ctx: Context) -> dict:
    """N fresh dead letters, published and routed to both queues before any drain starts."""
    n = ctx.params.recorder_events
    batch = data.publish_dead_letters(ctx.target, n, ctx.params.recorder_broker_share)
    wanted = [topology.RECORDER_QUEUE_NAME, DEAD_LETTER_FLOOR_QUEUE]
    deadline = time.monotonic() + 30
    while (depth := broker.depths(ctx.target, wanted)) != dict.fromkeys(wanted, n):
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected {n} dead letters in each of {wanted}, found {depth}")
        time.sleep(0.2)
    log(
        f"published {n} dead letters in {batch['publish_seconds']} s "
        f"({batch['dead_lettered_by_rabbitmq']} dead-lettered by RabbitMQ); prefetch {batch['prefetch']}"
    )
    return batch


def _drain_recorder(ctx: Context, batch: dict) -> dict:
    before = data.last_id(ctx.target, FAILED_EVENTS)
    result = _drain(
        ctx,
        lambda: ctx.stack.start_procfile("recorder"),
        topology.RECORDER_QUEUE_NAME,
        lambda: data.rows_after(ctx.target, FAILED_EVENTS, before),
    )
    result["recorded"] = data.failed_events_of(ctx.target, batch["ids"])  # the events' own rows, by id
    return result


def _drain_baseline(ctx: Context, batch: dict) -> dict:
    before = data.last_id(ctx.target, DEAD_LETTER_FLOOR_TABLE)
    argv = [PYTHON, "-m", "bench.floor.dead_letter_consumer", DEAD_LETTER_FLOOR_QUEUE]
    argv += ["--prefetch", str(batch["prefetch"])]
    return _drain(
        ctx,
        lambda: ctx.stack.start("floor-dead-letters", argv),
        DEAD_LETTER_FLOOR_QUEUE,
        lambda: data.rows_after(ctx.target, DEAD_LETTER_FLOOR_TABLE, before),
    )


_DRAINS = {"recorder": _drain_recorder, "baseline": _drain_baseline}


def _drain(ctx: Context, start, queue: str, rows) -> dict:
    """Start the consumer, wait (bounded) for N rows and an empty queue, stop it. The rate is from
    the process's start (its startup included) to the last row; ``steady_per_second`` from the
    first row seen to the last. CPU: the whole process, and the shared services over the drain."""
    n, timeout = ctx.params.recorder_events, ctx.params.recorder_timeout
    shared = {"postgres": cpu_seconds(system_pids("postgres")), "rabbitmq": cpu_seconds(system_pids("beam.smp"))}
    started = time.monotonic()
    proc: Proc = start()
    first = None
    try:
        while True:
            done = rows()
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if done >= n and not broker.depths(ctx.target, [queue])[queue]:
                break
            if now - started > timeout:
                log(f"{proc.name} stopped at {done}/{n} after {timeout:.0f}s; rate from what it did")
                break
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited; see {proc.log_path}")
            time.sleep(POLL_SECONDS)
        seconds = now - started
        cpu = cpu_seconds(proc.pids())
        shared_after = {
            "postgres": cpu_seconds(system_pids("postgres")),
            "rabbitmq": cpu_seconds(system_pids("beam.smp")),
        }
    finally:
        ctx.stack.stop(proc.name)
        if left := broker.depths(ctx.target, [queue])[queue]:
            log(f"{left} dead letters left in {queue} after {proc.name}: purged, so the next drain starts clean")
            broker.purge(ctx.target, [queue])
    steady = (done - first[1]) / (now - first[0]) if first and now > first[0] and done > first[1] else None
    return {
        "done": done,
        "seconds": round(seconds, 2),
        "per_second": round(done / seconds, 1) if done else None,
        "steady_per_second": round(steady, 1) if steady else None,
        "cpu_ms_per_event": round(cpu * 1000 / max(done, 1), 3),
        "shared_cpu_ms_per_event": {k: round((shared_after[k] - shared[k]) * 1000 / max(done, 1), 3) for k in shared},
    }


def _profile(ctx: Context) -> dict:
    """py-spy on the recorder while it drains another N dead letters (once it is consuming, so its
    startup is not in the profile); not a timed drain."""
    batch = _publish(ctx)
    before = data.last_id(ctx.target, FAILED_EVENTS)
    proc = ctx.stack.start_procfile("recorder")
    try:
        deadline = time.monotonic() + 60
        while not data.rows_after(ctx.target, FAILED_EVENTS, before) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        running = profile.start({"recorder": proc.pid}, ctx.params.profile_seconds, ctx.target.logdir / "profiles")
        summary = profile.finish(running, top=12)["recorder"]
        summary["recorded_while_profiled"] = data.rows_after(ctx.target, FAILED_EVENTS, before)
        summary["seconds"] = ctx.params.profile_seconds
        raw = running["recorder"][1]
        if raw.exists():
            summary["focus"] = profile.shares(raw, FOCUS)
        deadline = time.monotonic() + ctx.params.recorder_timeout
        while broker.depths(ctx.target, [topology.RECORDER_QUEUE_NAME])[topology.RECORDER_QUEUE_NAME]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        ctx.stack.stop(proc.name)
        broker.purge(
            ctx.target, [DEAD_LETTER_FLOOR_QUEUE, topology.subscriber_named(batch["subscriber"]).dead_letter_queue_name]
        )
    return summary
