"""Fault kinds. Each causes its fault for real, against the real processes, and returns a Row.

A kind never hides what the runtime could not survive: the row says lost N, duplicated N, and
its verdict names every expectation that failed. ``size(h, quick, full)`` picks the load.
"""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

from kombu import Producer

from marketplace.events import topology
from tests.faults.harness.effects import Hazards, Row
from tests.faults.harness.ledger import Harness
from tests.faults.harness.servers import PgBouncer, free_port
from tests.support.tcp_proxy import TcpProxy


def size(h: Harness, quick: int, full: int) -> int:
    return quick if h.quick else full


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return True
        time.sleep(interval)
    return False


def _emails_for(h: Harness, order_count: int) -> Callable[[], bool]:
    start = len(h.smtp.snapshot())
    return lambda: len(h.smtp.snapshot()) - start >= order_count


# --- workers ------------------------------------------------------------------------------------


def worker_killed(h: Harness, subscriber: str) -> Row:
    """SIGKILL a subscriber's worker (main process and pool) while its tasks are running."""
    row = Row(f"worker SIGKILLed mid-task: {subscriber}")
    buyers = h.buyers_for_row(8)
    started = time.time()
    h.smtp.delay = 0.3  # sends take a moment, so a task is in flight when the kill comes
    stream = h.place(size(h, 24, 60), buyers, rate=8, background=True)
    hazards = Hazards()
    _wait_until(lambda: len(stream.results) >= 6, 30)
    proc = h.system.procs[subscriber]
    log = proc.log_text()[proc.log_offset :]
    in_flight = len(re.findall(r"Task \S+\[([0-9a-f-]+)\] received", log)) - len(
        re.findall(r"Task \S+\[([0-9a-f-]+)\] (?:succeeded|retry|raised)", log)
    )
    killed_at = time.time()
    h.system.kill(subscriber)
    hazards.add(killed_at)
    row.notes.append(f"killed {subscriber} after {len(stream.results)} orders, {in_flight} task(s) in flight")
    time.sleep(1)
    h.system.start(subscriber)
    fault_end = time.time()
    stream.wait()
    h.smtp.delay = 0
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, hazards=hazards)


def backlog_drained(h: Harness) -> Row:
    """Workers stopped, a backlog of orders placed, workers started: everything drains once."""
    count = size(h, 200, 1000)
    row = Row(f"{count} orders with workers stopped, then started")
    buyers = h.buyers_for_row(40)
    started = time.time()
    for name in h.system.worker_names:
        h.system.stop(name)
    stream = h.place(count, buyers, concurrency=6)
    for name in h.system.worker_names:
        h.system.start(name, wait=False)
    for name in h.system.worker_names:
        h.system.wait_ready(h.system.procs[name])
    fault_end = time.time()
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=180)


# --- duplicates and poison ---------------------------------------------------------------------------


def duplicate_republish(h: Harness) -> Row:
    """Publish every event of the row twice more to the fanout: one effect per subscriber still."""
    row = Row("duplicate republish (each event 3 times on the fanout)")
    buyers = h.buyers_for_row(5)
    started = time.time()
    stream = h.place(size(h, 10, 40), buyers)
    order_ids = [r.order_id for r in stream.accepted]
    envelopes = h.envelopes(order_ids)
    for _ in range(2):
        for envelope in envelopes:
            h.publish_raw(json.dumps(envelope).encode())
    row.notes.append(f"republished {len(envelopes)} events twice")
    fault_end = time.time()
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=60)


def _poison_messages(h: Harness, marker: str, crash_event: str, template: dict) -> list[tuple[str, dict]]:
    """(name, publish kwargs) of each poison message; each carries ``marker`` where it can."""
    crash = {**template, "id": crash_event}
    return [
        ("NUL byte in a JSON body", {"body": f'{{"id": "{marker}\x00"}}'.encode()}),
        ("invalid UTF-8", {"body": b'{"note": "' + marker.encode() + b'\xff\xfe\xfd"}'}),
        ("10 MB message", {"body": json.dumps({"note": marker, "padding": "x" * (10 * 1024 * 1024)}).encode()}),
        ("non-JSON body", {"body": f"plain words {marker}".encode(), "content_type": "text/plain"}),
        (
            "Celery message naming an unknown task",
            {
                "body": json.dumps(
                    [[marker], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
                ).encode(),
                "headers": {
                    "lang": "py",
                    "task": "marketplace.no_such_task",
                    "id": str(uuid.uuid4()),
                    "argsrepr": repr([marker]),
                    "kwargsrepr": "{}",
                    "retries": 0,
                    "root_id": None,
                    "parent_id": None,
                    "group": None,
                },
            },
        ),
        ("handler crash-loops its worker (os._exit)", {"body": json.dumps(crash).encode(), "event_id": crash_event}),
    ]


def _failed_event_subscribers(h: Harness, marker: str, event_id: str | None) -> set[str]:
    if event_id:
        rows = h.db.query("SELECT subscriber FROM events_failedevent WHERE event_id = %s", (event_id,))
    else:
        columns = {
            c
            for (c,) in h.db.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'events_failedevent'"
            )
        }
        conditions = ["raw_body LIKE %(like)s", "payload::text LIKE %(like)s"]
        if "body" in columns:
            conditions.append("position(convert_to(%(marker)s, 'UTF8') in body) > 0")
        if "headers" in columns:
            conditions.append("headers::text LIKE %(like)s")
        rows = h.db.query(
            f"SELECT subscriber FROM events_failedevent WHERE {' OR '.join(conditions)}",  # noqa: S608 - fixed conditions
            {"like": f"%{marker}%", "marker": marker},
        )
    return {subscriber for (subscriber,) in rows}


def _subscribers_failing(body: bytes) -> set[str]:
    """Every subscriber dead-letters what it cannot read; a readable event only those handling its type."""
    try:
        event_type = json.loads(body).get("type")
    except (ValueError, AttributeError):
        event_type = None
    subscribers = topology.SUBSCRIBERS if event_type is None else topology.subscribers_of(event_type)
    return {s.name for s in subscribers}


def poison_messages(h: Harness, only: tuple[str, ...] = ()) -> Row:
    """Unreadable and crashing messages on the fanout: each ends as a FailedEvent for every
    subscriber, and the orders placed behind them keep flowing. ``only``: names to send."""
    row = Row(
        f"poison messages ({', '.join(only) if only else 'NUL, bad UTF-8, 10 MB, non-JSON, unknown task, crash loop'})"
    )
    buyers = h.buyers_for_row(5)
    started = time.time()
    first = h.place(2, buyers)
    template = h.envelopes([first.accepted[0].order_id])[0]
    marker = f"poison-{uuid.uuid4().hex[:12]}"
    crash_event = str(uuid.uuid4())
    (h.system.control_dir / "crash_events").write_text(crash_event + "\n")
    messages = [m for m in _poison_messages(h, marker, crash_event, template) if not only or m[0] in only]
    for name, message in messages:
        message = dict(message)
        message.pop("event_id", None)
        body = message.pop("body")
        try:
            h.publish_raw(body, **message)
        except Exception as exc:
            row.notes.append(f"could not publish {name}: {type(exc).__name__}: {exc}")
    behind = h.place(size(h, 10, 30), buyers)
    fault_end = time.time()
    # A readable event of a type a subscriber does not handle is skipped by it, not dead-lettered.
    fails_at = {name: _subscribers_failing(message["body"]) for name, message in messages}
    expected = sum(len(subscribers) for subscribers in fails_at.values())
    row = h.measure(
        row,
        buyers=buyers,
        streams=[first, behind],
        started=started,
        fault_end=fault_end,
        deadline=60,
        expected_dead_letters=expected,
    )
    # The orders' effects are in; give the dead letters until the same deadline to be recorded.
    unrecorded: dict[str, set[str]] = {}

    def all_recorded() -> bool:
        unrecorded.clear()
        for name, message in messages:
            missing = fails_at[name] - _failed_event_subscribers(h, marker, message.get("event_id"))
            if missing:
                unrecorded[name] = missing
        return not unrecorded

    _wait_until(all_recorded, max(5.0, fault_end + 90 - time.time()), interval=1)
    (h.system.control_dir / "crash_events").unlink(missing_ok=True)
    row.dead_lettered = h.counter.failed_events_since(started)
    problems = [p for p in row.verdict.removeprefix("FAIL: ").split("; ") if p and p != "pass"]
    problems = [p for p in problems if not p.startswith("dead-lettered")]
    for name, missing in unrecorded.items():
        problems.append(f"no FailedEvent for '{name}' in {', '.join(sorted(missing))}")
    row.notes.append(
        f"{len(messages)} poison messages at the subscribers each reaches: {expected} expected FailedEvents"
    )
    row.verdict = "pass" if not problems else "FAIL: " + "; ".join(problems)
    return row


# --- database -----------------------------------------------------------------------------------------


def database_outage_during_drain(h: Harness, outage: float | None = None) -> Row:
    """A backlog drains; the database stops mid-drain for ``outage`` seconds, then comes back."""
    outage = outage or h.db_outage_seconds or size(h, 15, 60)
    count = size(h, 60, 300)
    row = Row(f"database stopped {outage:.0f}s during a {count}-event drain")
    buyers = h.buyers_for_row(20)
    started = time.time()
    for name in h.system.worker_names:
        h.system.stop(name)
    stream = h.place(count, buyers, concurrency=6)
    for name in h.system.worker_names:
        h.system.start(name, wait=False)
    for name in h.system.worker_names:
        h.system.wait_ready(h.system.procs[name])
    progressed = _wait_until(_emails_for(h, max(3, count // 10)), 60)
    row.notes.append("drain under way" if progressed else "drain had not started when the database stopped")
    hazards = Hazards()
    stopped_at = time.time()
    h.postgres.stop()
    time.sleep(outage)
    h.postgres.start()
    fault_end = time.time()
    hazards.add(stopped_at, fault_end)
    return h.measure(
        row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, hazards=hazards,
        deadline=120, max_recovery=30,
    )  # fmt: skip


def _backend_pids(h: Harness, names: list[str]) -> list[int]:
    """PostgreSQL backend pids whose client is one of the named processes (matched by TCP port)."""
    pids = set()
    for name in names:
        pids |= h.system.pids(name)
    output = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, timeout=10).stdout
    client_ports = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[4].endswith(f":{h.postgres.port}"):
            continue
        if any(f"pid={pid}," in parts[5] for pid in pids):
            client_ports.append(int(parts[3].rsplit(":", 1)[1]))
    if not client_ports:
        return []
    return [
        pid for (pid,) in h.db.query("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (client_ports,))
    ]


def worker_backends_terminated(h: Harness) -> Row:
    """pg_terminate_backend on every worker's database connection, three times during a stream."""
    row = Row("worker database backends terminated (3 times)")
    buyers = h.buyers_for_row(8)
    started = time.time()
    h.smtp.delay = 0.2
    stream = h.place(size(h, 30, 90), buyers, rate=6, background=True)
    hazards = Hazards()
    terminated = 0
    for _ in range(3):
        time.sleep(1.5)
        pids = _backend_pids(h, h.system.worker_names)
        hazards.add(time.time())
        for pid in pids:
            h.db.query("SELECT pg_terminate_backend(%s)", (pid,))
        terminated += len(pids)
    row.notes.append(f"terminated {terminated} backends")
    fault_end = time.time()
    stream.wait()
    h.smtp.delay = 0
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, hazards=hazards)


# --- broker ---------------------------------------------------------------------------------------------


def broker_restart_during_intake(h: Harness) -> Row:
    outage = size(h, 8, 20)
    row = Row(f"broker stop_app/start_app ({outage}s) during intake")
    buyers = h.buyers_for_row(8)
    started = time.time()
    stream = h.place(size(h, 40, 120), buyers, rate=4, background=True)
    time.sleep(2)
    h.rabbit.stop_app()
    time.sleep(outage)
    h.rabbit.start_app()
    fault_end = time.time()
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120)


def broker_memory_alarm(h: Harness) -> Row:
    hold = size(h, 8, 20)
    row = Row(f"broker memory alarm ({hold}s) during intake")
    buyers = h.buyers_for_row(8)
    started = time.time()
    stream = h.place(size(h, 30, 90), buyers, rate=4, background=True)
    time.sleep(2)
    h.rabbit.ctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        time.sleep(hold)
    finally:
        h.rabbit.ctl("set_vm_memory_high_watermark", "0.4")
    fault_end = time.time()
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120)


def broker_connections_closed(h: Harness) -> Row:
    row = Row("rabbitmqctl close_all_connections (twice) during intake")
    buyers = h.buyers_for_row(8)
    started = time.time()
    stream = h.place(size(h, 30, 90), buyers, rate=5, background=True)
    for _ in range(2):
        time.sleep(2)
        h.rabbit.ctl("close_all_connections", "fault ledger")
    fault_end = time.time()
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=90)


def deleted_queue(h: Harness, subscriber: str = "order_confirmation") -> Row:
    """Delete a subscriber queue while its worker runs; orders keep coming; backfill the gap."""
    row = Row(f"queue deleted while its worker runs: {subscriber}")
    queue = topology.subscriber_named(subscriber).queue_name
    buyers = h.buyers_for_row(8)
    started = time.time()
    stream = h.place(size(h, 30, 90), buyers, rate=5, background=True)
    time.sleep(2)
    relay = h.system.procs["relay"]
    relay_log_from, mails_from = len(relay.log_text()), len(h.smtp.snapshot())
    deleted_at = time.time()
    h.rabbit.ctl("delete_queue", queue)
    redeclared = _wait_until(lambda: queue in h.rabbit.ctl("list_queues", "name", "--quiet").split(), 30, interval=1)
    bound = _wait_until(
        lambda: any(
            line.split()[:2] == [topology.EVENTS_EXCHANGE.name, queue]
            for line in h.rabbit.ctl("list_bindings", "source_name", "destination_name", "--quiet").splitlines()
        ),
        10,
        interval=1,
    )
    row.notes.append(
        (f"the queue was back {time.time() - deleted_at:.0f}s later" if redeclared else "no queue within 30s")
        + (" with its fanout binding" if bound else ", without its fanout binding")
    )
    stream.wait()
    # No operator step: the worker whose consumer was cancelled alerts and backfills the gap itself.
    _wait_until(lambda: any(queue in d.subject for d in h.smtp.snapshot()[mails_from:]), 60, interval=1)
    mails = [d for d in h.smtp.snapshot()[mails_from:] if queue in d.subject]
    relay_lines = [line for line in relay.log_text()[relay_log_from:].splitlines() if "ERROR" in line and queue in line]
    alerted = bool(mails or relay_lines)
    row.notes.append(
        f"alerted: {len(mails)} mail(s) naming the queue, {len(relay_lines)} relay ERROR line(s)"
        if alerted
        else "no alert named the queue"
    )
    fault_end = time.time()
    row = h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=60)
    for ok, problem in ((alerted, "no alert"), (redeclared and bound, "queue not re-declared with its binding")):
        if not ok:
            row.verdict = f"FAIL: {problem}" if row.verdict == "pass" else f"{row.verdict}; {problem}"
    return row


def topology_mismatch(h: Harness) -> Row:
    """A queue pre-declared with other arguments: setup_broker must refuse and name the queue."""
    row = Row("topology mismatch (queue pre-declared with other arguments)")
    started = time.time()
    vhost = f"mismatch-{uuid.uuid4().hex[:6]}"
    queue = topology.SUBSCRIBERS[0].queue_name
    h.rabbit.ctl("add_vhost", vhost)
    try:
        h.rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        with h.broker_connection(vhost) as conn:
            conn.default_channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
        result = h.system.manage("setup_broker", check=False, BROKER_URL=h.rabbit.url + vhost)
    finally:
        h.rabbit.ctl("delete_vhost", vhost)
    output = result.stdout + result.stderr
    named = queue in output
    row.notes.append(f"setup_broker exited {result.returncode}; output names the queue: {named}")
    row.seconds = round(time.time() - started, 1)
    row.verdict = "pass" if result.returncode != 0 and named else "FAIL: setup_broker did not refuse naming the queue"
    return row


# --- relay and web ---------------------------------------------------------------------------------------


def relay_killed_mid_batch(h: Harness) -> Row:
    """A backlog in the outbox (broker down while orders came in); the relay is SIGKILLed in the
    middle of publishing it, then two relays start at once."""
    count = size(h, 150, 400)
    row = Row(f"relay SIGKILLed mid-batch ({count} orders placed while the broker was down), then two relays")
    buyers = h.buyers_for_row(20)
    started = time.time()
    h.system.stop("relay")
    scarce = h.scarce_product(stock=20)
    h.rabbit.stop_app()
    try:
        stream = h.place(count, buyers, concurrency=6, scarce_product=scarce)
    finally:
        h.rabbit.start_app()
    pending_sql = "SELECT count(*) FROM events_outboxevent WHERE published_at IS NULL"
    pending = h.db.query(pending_sql)[0][0]
    row.notes.append(f"{pending} outbox rows pending")
    claimed_sql = "SELECT count(*) FROM events_outboxevent WHERE published_at IS NULL AND claimed_until > now()"
    h.system.start("relay", wait=False)
    # The relay commits its claim on a batch, publishes the batch, then records it as published:
    # kill it 50 ms into publishing a claimed batch.
    caught = _wait_until(lambda: h.db.query(claimed_sql)[0][0] > 0, 30, interval=0.005)
    time.sleep(0.05)
    h.system.kill("relay")
    claimed, left = h.db.query(claimed_sql)[0][0], h.db.query(pending_sql)[0][0]
    row.notes.append(f"relay killed holding a claimed batch of {claimed}; {left} of {pending} rows still pending")
    if not caught or not claimed:
        row.notes.append("the kill did not land inside a batch")
    h.system.start("relay", wait=False)
    h.system.start("relay2", command=h.system.commands["relay"], wait=False)
    fault_end = time.time()
    row = h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120)
    h.system.stop("relay2")
    h.system.procs.pop("relay2", None)
    return row


def web_killed_during_stream(h: Harness) -> Row:
    """SIGKILL gunicorn (master and workers) while clients place orders; clients retry with the
    same Idempotency-Key; orders whose publish died with the process reach the relay after
    their claim expires (OUTBOX_CLAIM_SECONDS)."""
    row = Row("web SIGKILLed during a stream of orders")
    buyers = h.buyers_for_row(8)
    started = time.time()
    scarce = h.scarce_product(stock=10)  # contended: a retried request must not take stock twice
    stream = h.place(size(h, 40, 120), buyers, rate=8, scarce_product=scarce, background=True)
    time.sleep(1.5)
    h.system.kill("web")
    time.sleep(1)
    h.system.start("web")
    fault_end = time.time()
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120)


# --- downstreams ---------------------------------------------------------------------------------------------


def seller_downstream(h: Harness, mode: str) -> Row:
    """The seller webhook refuses connections, hangs past the timeout, or answers 4xx for a while.

    Refused and hanging: retries deliver once it heals. 4xx is permanent by design: the
    notifications are dead-lettered, then replayed (``replay_failed_events``) once it heals.
    """
    hold = size(h, 6, 20)
    row = Row(f"seller webhook {mode} for {hold}s")
    buyers = h.buyers_for_row(8)
    started = time.time()
    scarce = h.scarce_product(stock=1000)
    if mode == "refusing":
        h.webhook.go_down()
    elif mode == "hanging":
        h.webhook.mode = "hang"
    else:
        h.webhook.mode = f"status:{mode}"
    stream = h.place(size(h, 20, 60), buyers, rate=4, scarce_product=scarce, background=True)
    time.sleep(hold)
    h.webhook.heal()
    fault_end = time.time()
    expected_dead = 0
    if mode.isdigit() and int(mode) < 500:
        stream.wait()
        time.sleep(3)
        expected_dead = h.counter.failed_events_since(started)
        replay = h.system.manage("replay_failed_events", "--subscriber", "seller_notification", check=False)
        row.notes.append(f"{expected_dead} dead-lettered by design (4xx); replay exited {replay.returncode}")
    return h.measure(
        row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=90,
        expected_dead_letters=expected_dead,
    )  # fmt: skip


def email_provider_refusing(h: Harness) -> Row:
    """The SMTP provider answers 451 to every recipient for a while: retries deliver later."""
    hold = size(h, 6, 20)
    row = Row(f"email provider refusing (451) for {hold}s")
    buyers = h.buyers_for_row(8)
    started = time.time()
    h.smtp.mode = "refuse"
    stream = h.place(size(h, 20, 60), buyers, rate=4, background=True)
    time.sleep(hold)
    h.smtp.heal()
    fault_end = time.time()
    row.notes.append(f"{h.smtp.refused} recipients refused")
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=90)


def counter_self_check(h: Harness) -> Row:
    """Not a fault of the system: proof that the counter sees losses and duplicates. Events are
    purged from the segmentation queue while its worker is stopped (lost: one profile increment
    per order) and one confirmation is delivered a second time straight to the SMTP sink
    (duplicated, outside the window)."""
    row = Row("counter self-check (purged queue, injected duplicate)")
    buyers = h.buyers_for_row(4)
    started = time.time()
    h.system.stop("customer_segmentation")
    stream = h.place(4, buyers)
    queue = topology.subscriber_named("customer_segmentation").queue_name
    _wait_until(lambda: h.queue_depths().get("customer_segmentation", 0) >= 4, 20)
    h.rabbit.ctl("purge_queue", queue)
    h.system.start("customer_segmentation")
    first = stream.accepted[0]
    envelope = h.envelopes([first.order_id])[0]
    _wait_until(lambda: any(d.event_id == envelope["id"] for d in h.smtp.snapshot()), 20)
    message = EmailMessage()
    message["From"] = "orders@marketplace.localhost"
    message["To"] = envelope["data"]["buyer"]["email"]
    message["Subject"] = "an injected second copy"
    message["X-Marketplace-Event-Id"] = envelope["id"]
    message.set_content("duplicate")
    with smtplib.SMTP("127.0.0.1", h.smtp.port, timeout=10) as smtp:
        smtp.send_message(message)
    return h.measure(row, buyers=buyers, streams=[stream], started=started, fault_end=time.time(), deadline=5)


# --- network partitions -----------------------------------------------------------------------------------

PARTITION_SECONDS = 30  # longer than two AMQP heartbeats (BROKER_HEARTBEAT=10 in the harness)


@contextlib.contextmanager
def _behind_proxy(h: Harness, name: str, server: str, url_query: str = ""):
    """Restart process ``name`` with its BROKER_URL or DATABASE_URL (plus ``url_query``) pointing at
    a TCP proxy, so a partition cuts just that process off; afterwards restart it talking to the
    server directly."""
    if server == "broker":
        proxy = TcpProxy("127.0.0.1", h.rabbit.port)
        env = {"BROKER_URL": h.rabbit.url.replace(f":{h.rabbit.port}/", f":{proxy.port}/") + url_query}
    else:
        proxy = TcpProxy("127.0.0.1", h.postgres.port)
        env = {"DATABASE_URL": h.postgres.url.replace(f":{h.postgres.port}/", f":{proxy.port}/") + url_query}
    try:
        h.system.stop(name)
        h.system.start(name, env=env)
        yield proxy
    finally:
        proxy.heal()
        h.system.stop(name)
        proxy.close()
        h.system.start(name)


def _partition(proxy: TcpProxy, seconds: float) -> tuple[float, float]:
    started = time.time()
    proxy.blackhole()
    try:
        time.sleep(seconds)
    finally:
        proxy.heal()
    return started, time.time()


def worker_broker_partition(h: Harness, subscriber: str = "seller_notification") -> Row:
    """Packets between one worker and RabbitMQ are dropped (not refused) for longer than two
    heartbeats: both sides must give the connection up, the broker requeue the worker's
    unacknowledged messages, and the worker reconnect on its own once the network heals."""
    row = Row(f"network partition, packets dropped {PARTITION_SECONDS}s: worker {subscriber} <-> RabbitMQ")
    buyers = h.buyers_for_row(8)
    with _behind_proxy(h, subscriber, "broker") as proxy:
        started = time.time()
        h.smtp.delay = 0.3  # sends take a moment, so a task is in flight when the partition begins
        stream = h.place(size(h, 30, 60), buyers, rate=2, background=True)
        time.sleep(3)
        _, fault_end = _partition(proxy, PARTITION_SECONDS)
        h.smtp.delay = 0
        row = h.measure(
            row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120, max_recovery=60
        )
        proc = h.system.procs[subscriber]
        log = proc.log_text()[proc.log_offset :]
        row.notes.append(
            f"{subscriber} gave the connection up {log.count('Too many heartbeats missed')} time(s) for missed"
            f" heartbeats and failed {log.count('consumer: Cannot connect')} reconnect(s) before the heal"
        )
    return row


def worker_database_partition(h: Harness, subscriber: str = "order_confirmation") -> Row:
    """Packets between one worker and PostgreSQL are dropped (not refused) while it sends emails:
    its queries and new connections wait (or fail and wait without spending retries); once the
    network heals every event has its effect once. The worker's sessions end after 10 s idle in a
    transaction (as many production servers set it), so the server ends a transaction the partition
    caught after its email went out: the worker's commit fails after the heal, the send-then-commit
    window."""
    row = Row(f"network partition, packets dropped {PARTITION_SECONDS}s: worker {subscriber} <-> PostgreSQL")
    buyers = h.buyers_for_row(8)
    postgres_log_from = len(_postgres_log(h))
    idle_timeout = "?options=-c%20idle_in_transaction_session_timeout%3D10s"
    with _behind_proxy(h, subscriber, "database", url_query=idle_timeout) as proxy:
        started = time.time()
        h.smtp.delay = 1.5  # the worker spends most of its time in a send, inside its transaction
        stream = h.place(size(h, 30, 60), buyers, rate=2, background=True)
        time.sleep(3)
        hazards = Hazards()
        partitioned_at, fault_end = _partition(proxy, PARTITION_SECONDS)
        hazards.add(partitioned_at, fault_end)  # a commit after a send may fail with the connection
        h.smtp.delay = 0
        row = h.measure(
            row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, hazards=hazards,
            deadline=120, max_recovery=60,
        )  # fmt: skip
    ended = _postgres_log(h)[postgres_log_from:].count("idle-in-transaction timeout")
    row.notes.append(f"the server ended {ended} of the worker's transaction(s) caught by the partition")
    return row


def _postgres_log(h: Harness) -> str:
    try:
        return h.postgres.logfile.read_text(errors="replace")
    except OSError:
        return ""


def web_broker_partition(h: Harness) -> Row:
    """Packets between the web and RabbitMQ are dropped while orders arrive: every order is still
    answered in normal time (the publish is off the request path and bounded), the relay publishes
    the events the web could not, and the web publishes again once the network heals."""
    row = Row(f"network partition, packets dropped {PARTITION_SECONDS}s: web <-> RabbitMQ during intake")
    buyers = h.buyers_for_row(8)
    with _behind_proxy(h, "web", "broker") as proxy:
        started = time.time()
        stream = h.place(size(h, 60, 120), buyers, rate=3, background=True)
        time.sleep(3)
        _, fault_end = _partition(proxy, PARTITION_SECONDS)
        stream.wait()
        slowest = max((r.seconds for r in stream.results if r.status), default=0.0)
        retried = sum(1 for r in stream.results if r.attempts > 1)
        row.notes.append(f"slowest answer {slowest:.1f}s; {retried} order(s) needed a second attempt")
        problems = [f"an order waited {slowest:.1f}s for its answer"] if slowest > 5 or retried else []
        row = h.measure(
            row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120,
            max_recovery=60, problems=problems,
        )  # fmt: skip
    return row


# --- crash loop, disk alarm -------------------------------------------------------------------------------

CRASH_LOOP = "handler crash-loops its worker (os._exit)"


def handler_crash_loop(h: Harness) -> Row:
    """One event whose handler kills its worker process every time it runs (os._exit via the test
    hook): the queue's delivery limit ends the loop, the event becomes a FailedEvent of every
    subscriber that handles it, and the orders behind it flow."""
    logs_from = {name: len(h.system.procs[name].log_text()) for name in h.system.worker_names}
    row = poison_messages(h, only=(CRASH_LOOP,))
    row.fault = "handler kills its worker on every delivery of one event"
    crashes = {
        name: h.system.procs[name].log_text()[offset:].count("exited with 'exitcode 70'")
        for name, offset in logs_from.items()
    }
    crashed = {name: count for name, count in crashes.items() if count}
    row.notes.append(
        "worker processes killed by the event: "
        + (", ".join(f"{name} {count}" for name, count in crashed.items()) or "none")
        + f" (delivery limit {topology.DELIVERY_LIMIT})"
    )
    over = [name for name, count in crashed.items() if count > topology.DELIVERY_LIMIT + 1]
    if over or not crashed:
        problem = f"crash loop not bounded in {', '.join(over)}" if over else "the event never crashed a worker"
        row.verdict = f"FAIL: {problem}" if row.verdict == "pass" else f"{row.verdict}; {problem}"
    return row


def broker_disk_alarm(h: Harness) -> Row:
    """RabbitMQ raises its disk alarm (free-space limit far above the disk) during intake: it blocks
    every publisher; orders are still answered, events wait in the outbox, and flow once it clears."""
    hold = size(h, 8, 20)
    row = Row(f"broker disk alarm ({hold}s) during intake")
    buyers = h.buyers_for_row(8)
    started = time.time()
    stream = h.place(size(h, 30, 90), buyers, rate=4, background=True)
    time.sleep(2)
    h.rabbit.ctl("set_disk_free_limit", "1000000GB")
    try:
        raised = _wait_until(lambda: "disk" in h.rabbit.ctl("status"), 10, interval=0.5)
        time.sleep(hold)
    finally:
        h.rabbit.ctl("set_disk_free_limit", "50MB")
    fault_end = time.time()
    row.notes.append("disk alarm raised" if raised else "no disk alarm in rabbitmqctl status")
    stream.wait()
    slowest = max((r.seconds for r in stream.results if r.status), default=0.0)
    row.notes.append(f"slowest answer {slowest:.1f}s")
    problems = [] if raised else ["no disk alarm"]
    return h.measure(
        row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=120, problems=problems
    )


# --- the dead-letter recorder under a backlog ----------------------------------------------------------------


def _dead_letter_backlog(h: Harness, messages: int) -> tuple[str, int]:
    """Stop the recorder and dead-letter ``messages`` unreadable messages at every subscriber; wait
    until the recorder's queue holds them all. Returns the marker in their bodies and the number of
    dead letters (messages x subscribers)."""
    h.system.stop("recorder")
    marker = f"backlog-{uuid.uuid4().hex[:12]}"
    with h.broker_connection() as conn:
        producer = Producer(conn.default_channel)
        for i in range(messages):
            producer.publish(
                f"unreadable {marker} {i}".encode(),
                exchange=topology.EVENTS_EXCHANGE.name,
                routing_key="",
                serializer=None,
                content_type="text/plain",
                content_encoding="utf-8",
                delivery_mode=2,
            )
    expected = messages * len(topology.SUBSCRIBERS)
    _wait_until(lambda: _recorder_queue_depth(h) >= expected, 120, interval=1)
    return marker, expected


def _recorder_queue_depth(h: Harness) -> int:
    with h.broker_connection() as conn:
        return conn.default_channel.queue_declare(topology.RECORDER_QUEUE_NAME, passive=True).message_count


def _recorded(h: Harness, marker: str) -> dict[str, tuple[int, int]]:
    """subscriber -> (FailedEvent rows, distinct bodies) for the backlog's dead letters."""
    return {
        subscriber: (rows, bodies)
        for subscriber, rows, bodies in h.db.query(
            "SELECT subscriber, count(*), count(DISTINCT body_digest) FROM events_failedevent"
            " WHERE raw_body LIKE %s GROUP BY subscriber",
            (f"%{marker}%",),
        )
    }


def _recorded_count(h: Harness, marker: str) -> int:
    return sum(rows for rows, _ in _recorded(h, marker).values())


def _backlog_verdict(h: Harness, row: Row, marker: str, messages: int, expected: int, deadline: float) -> list[str]:
    """Wait for the backlog to be recorded; the problems if it is not exactly one row per dead letter."""
    _wait_until(lambda: _recorded_count(h, marker) >= expected, deadline, interval=1)
    time.sleep(3)  # late duplicates
    recorded = _recorded(h, marker)
    rows = sum(r for r, _ in recorded.values())
    duplicated = sum(r - b for r, b in recorded.values())
    depth = _recorder_queue_depth(h)
    row.notes.append(
        f"{expected} dead letters ({messages} messages x {len(topology.SUBSCRIBERS)} subscribers): {rows} FailedEvent"
        f" rows, {duplicated} duplicated; {depth} left in the recorder's queue"
    )
    problems = []
    if rows - duplicated < expected:
        problems.append(f"{expected - (rows - duplicated)} dead letter(s) without a FailedEvent")
    if duplicated:
        problems.append(f"{duplicated} dead letter(s) recorded twice")
    missing = [s.name for s in topology.SUBSCRIBERS if recorded.get(s.name, (0, 0))[1] != messages]
    if missing and not problems:
        problems.append(f"wrong count for {', '.join(missing)}")
    return problems


def database_restart_recorder_backlog(h: Harness) -> Row:
    """The recorder works through hundreds of dead letters; PostgreSQL restarts in the middle. Every
    dead letter still ends as exactly one FailedEvent, and the recorder keeps running."""
    messages = size(h, 60, 150)
    dead_letters = messages * len(topology.SUBSCRIBERS)
    row = Row(f"database restarted while the recorder works through {dead_letters} dead letters")
    buyers = h.buyers_for_row(8)
    started = time.time()
    marker, expected = _dead_letter_backlog(h, messages)
    stream = h.place(size(h, 10, 20), buyers)
    h.system.start("recorder")
    landed = _wait_until(lambda: _recorded_count(h, marker) >= 5, 60, interval=0.05)
    at_stop = _recorded_count(h, marker)
    hazards = Hazards()
    stopped_at = time.time()
    h.postgres.stop()
    time.sleep(size(h, 3, 5))
    h.postgres.start()
    fault_end = time.time()
    hazards.add(stopped_at, fault_end)
    row.notes.append(f"PostgreSQL stopped with {at_stop} of {expected} dead letters recorded")
    problems = _backlog_verdict(h, row, marker, messages, expected, deadline=120)
    if not landed or at_stop >= expected:
        problems.append("the restart did not land mid-backlog")
    return h.measure(
        row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, hazards=hazards, deadline=90,
        expected_dead_letters=expected, problems=problems,
    )  # fmt: skip


def recorder_killed_mid_backlog(h: Harness) -> Row:
    """SIGKILL the recorder while it works through hundreds of dead letters, then start it again:
    whatever it had not acknowledged is delivered again, and recorded exactly once."""
    # Big enough that the kill lands mid-backlog: the recorder writes a thousand dead letters a second.
    messages = size(h, 60, 600)
    row = Row(f"recorder SIGKILLed mid-backlog of {messages * len(topology.SUBSCRIBERS)} dead letters, then restarted")
    buyers = h.buyers_for_row(8)
    started = time.time()
    marker, expected = _dead_letter_backlog(h, messages)
    stream = h.place(size(h, 10, 20), buyers)
    h.system.start("recorder")
    landed = _wait_until(lambda: _recorded_count(h, marker) >= 5, 60, interval=0.02)
    h.system.kill("recorder")
    at_kill = _recorded_count(h, marker)
    row.notes.append(f"recorder killed with {at_kill} of {expected} dead letters recorded")
    time.sleep(1)
    h.system.start("recorder")
    fault_end = time.time()
    problems = _backlog_verdict(h, row, marker, messages, expected, deadline=120)
    if not landed or at_kill >= expected:
        problems.append("the kill did not land mid-backlog")
    return h.measure(
        row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, deadline=60,
        expected_dead_letters=expected, problems=problems,
    )  # fmt: skip


# --- pgbouncer ---------------------------------------------------------------------------------------------

# What every process needs behind a transaction-pooling pgbouncer (docs/operations.md).
PGBOUNCER_ENV = {"DATABASE_DISABLE_SERVER_SIDE_CURSORS": "true"}


def _restart_all(h: Harness, env: dict | None) -> None:
    """Stop every process at once, then start them all with ``env`` (None: talking to PostgreSQL
    directly again) and wait until each is ready."""
    names = list(h.system.commands)
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(h.system.stop, names))
    for name in names:
        h.system.start(name, env=env, wait=False)
    for name in names:
        h.system.wait_ready(h.system.procs[name], timeout=180)


def _connections_to(h: Harness, ports: dict[str, int]) -> dict[str, dict[str, int]]:
    """Process name -> {label: open TCP connections to that port} for every running process."""
    output = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, timeout=10).stdout
    seen: dict[str, dict[str, int]] = {}
    for name in h.system.procs:
        pids = h.system.pids(name)
        counts = dict.fromkeys(ports, 0)
        for line in output.splitlines():
            parts = line.split()
            if len(parts) < 6 or not any(f"pid={pid}," in parts[5] for pid in pids):
                continue
            for label, port in ports.items():
                if parts[4].endswith(f":{port}"):
                    counts[label] += 1
        seen[name] = counts
    return seen


def _publish_unreadable(h: Harness) -> str:
    """A text/plain message on the fanout: every subscriber dead-letters it, the recorder records it."""
    marker = f"pgbouncer-{uuid.uuid4().hex[:12]}"
    h.publish_raw(f"plain words {marker}".encode(), content_type="text/plain")
    return marker


def _reward_problems(h: Harness, buyers: list[dict]) -> tuple[list[str], str]:
    """Every (buyer, rewarded segment) a customer.segment_changed event announced has one reward
    code and one email carrying the code's event id (the loyalty_rewards worker)."""
    buyer_ids = [b["id"] for b in buyers]
    announced = {
        (int(buyer), segment)
        for buyer, segment in h.db.query(
            "SELECT envelope->'data'->'buyer'->>'id', envelope->'data'->>'segment' FROM events_outboxevent"
            " WHERE event_type = 'customer.segment_changed' AND (envelope->'data'->'buyer'->>'id')::bigint = ANY(%s)",
            (buyer_ids,),
        )
        if segment in ("loyal", "high_value")
    }
    codes = h.db.query(
        "SELECT buyer_id, segment, event_id FROM loyalty_rewardcode WHERE buyer_id = ANY(%s)", (buyer_ids,)
    )
    emails = {}
    for delivery in h.smtp.snapshot():
        emails[delivery.event_id] = emails.get(delivery.event_id, 0) + 1
    problems = []
    if not announced:
        problems.append("no buyer reached a rewarded segment")
    missing = announced - {(buyer, segment) for buyer, segment, _ in codes}
    if missing:
        problems.append(f"{len(missing)} rewarded segment(s) without a reward code")
    unsent = [str(event) for _, _, event in codes if emails.get(str(event), 0) != 1]
    if unsent:
        problems.append(f"{len(unsent)} reward code(s) not emailed exactly once")
    return problems, f"{len(codes)} reward code(s) for {len(announced)} rewarded segment change(s)"


def _prune_through(h: Harness, env: dict) -> tuple[list[str], str]:
    """Age every published outbox row and every dedupe marker so far past retention (40 days), run
    ``manage.py prune_events`` with ``env``, and check that it deleted them all (but the markers of
    events with an open failure, which are kept)."""
    outbox_max = h.db.query("SELECT coalesce(max(id), 0) FROM events_outboxevent WHERE published_at IS NOT NULL")[0][0]
    marker_max = h.db.query("SELECT coalesce(max(id), 0) FROM events_processedevent")[0][0]
    # Pending rows age too (prune_events must keep them): a pending row left within retention below
    # the others would end prune_events' walk up the ids early.
    aged_outbox = h.db.query(
        "UPDATE events_outboxevent SET created_at = created_at - interval '40 days',"
        " published_at = published_at - interval '40 days' WHERE id <= %s RETURNING published_at",
        (outbox_max,),
    )
    aged_outbox = [published_at for (published_at,) in aged_outbox if published_at is not None]
    kept_markers_sql = (
        "SELECT count(*) FROM events_processedevent p WHERE p.id <= %s AND EXISTS (SELECT 1 FROM events_failedevent f"
        " WHERE f.subscriber = p.subscriber AND f.event_id = p.event_id AND f.status IN ('failed', 'replaying'))"
    )
    kept_markers = h.db.query(kept_markers_sql, (marker_max,))[0][0]
    aged_markers = h.db.query(
        "UPDATE events_processedevent SET processed_at = processed_at - interval '40 days' WHERE id <= %s RETURNING id",
        (marker_max,),
    )
    result = h.system.manage("prune_events", check=False, **env)
    outbox_left = h.db.query(
        "SELECT count(*) FROM events_outboxevent WHERE id <= %s AND published_at IS NOT NULL", (outbox_max,)
    )[0][0]
    markers_left = h.db.query("SELECT count(*) FROM events_processedevent WHERE id <= %s", (marker_max,))[0][0]
    problems = []
    if result.returncode != 0:
        problems.append(f"prune_events exited {result.returncode}: {result.stderr.strip()[-200:]}")
    if outbox_left:
        problems.append(f"prune_events left {outbox_left} of {len(aged_outbox)} expired outbox rows")
    if markers_left != kept_markers:
        problems.append(f"prune_events left {markers_left} expired markers, expected {kept_markers}")
    if not aged_outbox or not aged_markers:
        problems.append("nothing to prune")
    return problems, (
        f"prune_events through pgbouncer deleted {len(aged_outbox) - outbox_left} of {len(aged_outbox)} expired outbox"
        f" rows and {len(aged_markers) - markers_left} of {len(aged_markers)} expired markers"
    )


def behind_pgbouncer(h: Harness) -> Row:
    """Every process reaches PostgreSQL through pgbouncer in transaction pooling mode, with fewer
    server connections than clients: orders through the API (gunicorn), the relay, every subscriber
    worker, the dead-letter recorder, beat and the maintenance worker. PostgreSQL restarts behind
    pgbouncer mid-stream; unreadable messages are recorded by the recorder before and after it; then
    ``manage.py prune_events`` runs through pgbouncer. Afterwards every process talks to PostgreSQL
    directly again."""
    outage = size(h, 5, 15)
    count = size(h, 40, 120)
    pool = 8
    row = Row(
        f"pgbouncer (transaction pooling, {pool} server connections) between every process and PostgreSQL;"
        f" PostgreSQL restarted ({outage}s) mid-stream; prune_events through it"
    )
    bouncer = PgBouncer(
        h.servers.workdir, free_port(), h.postgres.port, control_dir=h.system.control_dir, pool_size=pool
    )
    bouncer.start()
    env = {"DATABASE_URL": bouncer.url, **PGBOUNCER_ENV}
    buyers = h.buyers_for_row(8)
    problems: list[str] = []
    try:
        _restart_all(h, env)
        started = time.time()
        markers = [_publish_unreadable(h)]
        stream = h.place(count, buyers, rate=4, background=True)
        _wait_until(lambda: len(stream.results) >= count // 3, 60)
        hazards = Hazards()
        stopped_at = time.time()
        h.postgres.stop()
        time.sleep(outage)
        h.postgres.start()
        fault_end = time.time()
        hazards.add(stopped_at, fault_end)
        markers.append(_publish_unreadable(h))
        subscribers = {s.name for s in topology.SUBSCRIBERS}
        recorded = _wait_until(
            lambda: all(_failed_event_subscribers(h, marker, None) >= subscribers for marker in markers), 120, 1
        )
        if not recorded:
            problems.append("the recorder did not record every dead letter")
        connections = _connections_to(h, {"pgbouncer": bouncer.port, "postgres": h.postgres.port})
        row = h.measure(
            row, buyers=buyers, streams=[stream], started=started, fault_end=fault_end, hazards=hazards,
            deadline=120, max_recovery=60, expected_dead_letters=len(markers) * len(subscribers), problems=problems,
        )  # fmt: skip
        problems = [p for p in row.verdict.removeprefix("FAIL: ").split("; ") if p and p != "pass"]
        _wait_until(lambda: not _reward_problems(h, buyers)[0], 30, 1)
        reward_problems, reward_note = _reward_problems(h, buyers)
        problems += reward_problems
        row.notes.append(reward_note)
        direct = {name: c["postgres"] for name, c in connections.items() if c["postgres"]}
        through = sorted(name for name, c in connections.items() if c["pgbouncer"])
        row.notes.append(f"connected through pgbouncer at the end: {', '.join(through) or 'none'}")
        if direct:
            problems.append(f"connected to PostgreSQL directly: {direct}")
        stats = {r["database"]: r for r in bouncer.admin("SHOW STATS")}.get("marketplace", {})
        row.notes.append(f"pgbouncer served {stats.get('total_xact_count', '?')} transactions")
        prune_problems, prune_note = _prune_through(h, env)
        problems += prune_problems
        row.notes.append(prune_note)
    finally:
        _restart_all(h, None)
        bouncer.stop()
    refused = bouncer.log_text().count("server login has been failing")
    row.notes.append(f"pgbouncer refused {refused} login(s) while PostgreSQL was down")
    row.verdict = "pass" if not problems else "FAIL: " + "; ".join(problems)
    return row


# name -> fault kind: the ledger, in priority order.
KINDS: dict[str, Callable[[Harness], Row]] = {
    "worker-kill-confirmation": lambda h: worker_killed(h, "order_confirmation"),
    "worker-kill-sellers": lambda h: worker_killed(h, "seller_notification"),
    "worker-kill-segmentation": lambda h: worker_killed(h, "customer_segmentation"),
    "database-outage": database_outage_during_drain,
    "broker-restart": broker_restart_during_intake,
    "relay-kill": relay_killed_mid_batch,
    "web-kill": web_killed_during_stream,
    "seller-refusing": lambda h: seller_downstream(h, "refusing"),
    "seller-hanging": lambda h: seller_downstream(h, "hanging"),
    "seller-4xx": lambda h: seller_downstream(h, "410"),
    "email-refusing": email_provider_refusing,
    "duplicate-republish": duplicate_republish,
    "backlog": backlog_drained,
    "backends-terminated": worker_backends_terminated,
    "memory-alarm": broker_memory_alarm,
    "connections-closed": broker_connections_closed,
    "poison": poison_messages,
    "deleted-queue": deleted_queue,
    "topology-mismatch": topology_mismatch,
    "partition-worker-broker": worker_broker_partition,
    "partition-worker-database": worker_database_partition,
    "partition-web-broker": web_broker_partition,
    "crash-loop": handler_crash_loop,
    "disk-alarm": broker_disk_alarm,
    "recorder-database-restart": database_restart_recorder_backlog,
    "recorder-kill": recorder_killed_mid_backlog,
    "pgbouncer": behind_pgbouncer,
}


def run_kind(h: Harness, name: str) -> Row:
    """Run one kind; a kind that crashes still yields a row (and the harness is healed after it)."""
    function = KINDS[name]
    started = time.time()
    try:
        row = function(h)
    except Exception as exc:
        row = Row(name, verdict=f"ERROR: {type(exc).__name__}: {str(exc)[:300]}")
        row.seconds = round(time.time() - started, 1)
    h.quiesce()
    return row
