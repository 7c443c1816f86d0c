"""Where the time of one POST /api/orders/ goes, measured in-process (no HTTP server, no client).

Run inside `manage.py shell` against the bench database and vhost (run_all.py does this).
Times, each over BENCH_N iterations:
  - a bare database round trip (SELECT 1),
  - orders.services.order_place: the transaction, with the on-commit publish timed separately
    (publish = connect-once + basic.publish + wait for the publisher confirm),
  - a publish of an envelope alone on a warm connection,
  - the whole Django/DRF request through django.test.Client (middleware, auth, parsing,
    order_place, re-reading the order, rendering), i.e. everything but gunicorn and the socket,
and counts the SQL statements of one request. Prints one JSON line prefixed with BENCH_BREAKDOWN.
"""

import cProfile
import io
import json
import os
import pstats
import random
import time
import uuid

from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from marketplace.events import outbox, publisher
from orders import services

N = int(os.environ.get("BENCH_N", "200"))
PRODUCTS = json.loads(os.environ["BENCH_PRODUCTS_JSON"])
rng = random.Random(42)


def ms(values):
    values = sorted(v * 1000 for v in values)
    return {
        "n": len(values),
        "p50_ms": round(values[len(values) // 2], 3),
        "p95_ms": round(values[int(len(values) * 0.95)], 3),
        "mean_ms": round(sum(values) / len(values), 3),
    }


def lines():
    a, b = rng.sample(PRODUCTS, 2)
    return [services.LineRequest(product_id=a, quantity=1), services.LineRequest(product_id=b, quantity=1)]


buyer = get_user_model().objects.get(username="bench-buyer-00")
token = Token.objects.get(user=buyer).key
out = {}

# 1. database round trip
samples = []
with connection.cursor() as cursor:
    for _ in range(N):
        t0 = time.perf_counter()
        cursor.execute("SELECT 1")
        cursor.fetchone()
        samples.append(time.perf_counter() - t0)
out["db_select_1"] = ms(samples)

# 1b. a committed single-row INSERT (autocommit): the WAL flush every transaction pays
samples = []
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (x int)")
    try:
        for _ in range(N):
            t0 = time.perf_counter()
            cursor.execute("INSERT INTO bench_commit_probe VALUES (1)")
            samples.append(time.perf_counter() - t0)
    finally:
        cursor.execute("DROP TABLE bench_commit_probe")
out["db_commit_1_row"] = ms(samples)

# 2. order_place, publish timed separately (the on-commit hook looks the name up at call time)
publish_times = []
original = outbox.publish_after_commit


def timed_publish(outbox_id, envelope):
    t0 = time.perf_counter()
    original(outbox_id, envelope)
    publish_times.append(time.perf_counter() - t0)


broker_times, record_times = [], []
original_broker_publish = publisher.BrokerPublisher.publish
original_record = publisher.record_results


def timed_broker_publish(self, envelope):
    t0 = time.perf_counter()
    try:
        return original_broker_publish(self, envelope)
    finally:
        broker_times.append(time.perf_counter() - t0)


def timed_record(results):
    t0 = time.perf_counter()
    try:
        return original_record(results)
    finally:
        record_times.append(time.perf_counter() - t0)


outbox.publish_after_commit = timed_publish
publisher.BrokerPublisher.publish = timed_broker_publish
publisher.record_results = timed_record
try:
    totals, cpu = [], []
    for _ in range(N):
        t0, c0 = time.perf_counter(), time.process_time()
        services.order_place(
            buyer=buyer, lines=lines(), correlation_id=str(uuid.uuid4()), idempotency_key=str(uuid.uuid4())
        )
        totals.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    with CaptureQueriesContext(connection) as captured:
        services.order_place(
            buyer=buyer, lines=lines(), correlation_id=str(uuid.uuid4()), idempotency_key=str(uuid.uuid4())
        )
finally:
    outbox.publish_after_commit = original
    publisher.BrokerPublisher.publish = original_broker_publish
    publisher.record_results = original_record
publish_in_place = publish_times[:N]
out["publish_part_broker_confirm"] = ms(broker_times[1:N])  # the first one includes connect + declare
out["publish_part_first_connect_ms"] = round(broker_times[0] * 1000, 1)
out["publish_part_mark_published_update"] = ms(record_times[:N])
out["order_place_total"] = ms(totals)
out["order_place_own_cpu"] = ms(cpu)
out["order_place_publish_part"] = ms(publish_in_place)
out["order_place_transaction_part"] = ms([t - p for t, p in zip(totals, publish_in_place, strict=False)])
out["order_place_queries"] = len(captured.captured_queries)
out["order_place_sql"] = [q["sql"][:160] for q in captured.captured_queries]

# 2b. per statement: wall time of each SQL statement of order_place (execute_wrapper)
import re  # noqa: E402

per_statement: dict[str, list[float]] = {}


def statement_key(sql):
    sql = sql.strip()
    head = re.sub(r"\s+", " ", sql)[:60]
    for table in ("orders_idempotencykey", "orders_product", "orders_orderline", "orders_order", "events_outboxevent"):
        if table in sql:
            verb = head.split(" ")[0]
            lock = " FOR UPDATE" if "FOR UPDATE" in sql else ""
            return f"{verb} {table}{lock}"
    return head.split("(")[0]


def timing_wrapper(execute, sql, params, many, context):
    t0 = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        key = statement_key(sql)
        per_statement.setdefault(key, []).append(time.perf_counter() - t0)


outbox.publish_after_commit = lambda outbox_id, envelope: None  # the transaction only
try:
    no_publish_totals = []
    with connection.execute_wrapper(timing_wrapper):
        for _ in range(N):
            t0 = time.perf_counter()
            services.order_place(
                buyer=buyer, lines=lines(), correlation_id=str(uuid.uuid4()), idempotency_key=str(uuid.uuid4())
            )
            no_publish_totals.append(time.perf_counter() - t0)
finally:
    outbox.publish_after_commit = original
# (BEGIN and COMMIT do not pass through execute_wrapper; db_commit_1_row shows what a commit costs)
out["order_place_statements"] = {k: ms(v) for k, v in per_statement.items()}
# the same transaction with no publish: no events, so the workers sit idle and leave the CPU alone
out["order_place_no_publish_idle_workers"] = ms(no_publish_totals)
# these rows were never published: hand them to the relay now
publisher.OutboxEvent.objects.filter(published_at__isnull=True).update(claimed_until=None)

# 3. publish alone on a warm connection (same path: fanout, mandatory, persistent, confirm)
envelope = publisher.OutboxEvent.objects.order_by("-id").values_list("envelope", flat=True).first()
pub = publisher.BrokerPublisher()
samples = []
try:
    for _ in range(N):
        env = dict(envelope, id=str(uuid.uuid4()))
        t0 = time.perf_counter()
        pub.publish(env)
        samples.append(time.perf_counter() - t0)
finally:
    pub.close()
out["publish_alone_warm"] = ms(samples)

# 4. whole request in-process
client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
samples, cpu = [], []
statuses = {}
for _ in range(N):
    body = json.dumps({"lines": [{"product": line.product_id, "quantity": 1} for line in lines()]})
    t0, c0 = time.perf_counter(), time.process_time()
    response = client.post(
        "/api/orders/", data=body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4())
    )
    samples.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
with CaptureQueriesContext(connection) as captured:
    body = json.dumps({"lines": [{"product": line.product_id, "quantity": 1} for line in lines()]})
    client.post("/api/orders/", data=body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
out["request_in_process"] = ms(samples)
out["request_in_process_own_cpu"] = ms(cpu)
out["request_in_process_statuses"] = statuses
out["request_queries"] = len(captured.captured_queries)
out["request_sql"] = [q["sql"][:160] for q in captured.captured_queries]

# 5. where the request's own CPU goes: cProfile over a few requests, top functions by own time
profiler = cProfile.Profile()
for _ in range(max(10, N // 4)):
    body = json.dumps({"lines": [{"product": line.product_id, "quantity": 1} for line in lines()]})
    profiler.enable()
    client.post("/api/orders/", data=body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
    profiler.disable()
stream = io.StringIO()
pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
out["profile_cumulative_top30"] = stream.getvalue().splitlines()[-40:]
stream = io.StringIO()
pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
out["profile_tottime_top15"] = stream.getvalue().splitlines()[-22:]

print("BENCH_BREAKDOWN " + json.dumps(out))
