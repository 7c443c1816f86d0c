"""The benchmark harness runs: a tiny load through the floor, the API-alone trio, the full stack and
the drains; and the dead-letter recorder against its plain consumer.

Benchmarks are not timed tests: this checks the harness's structure (processes start and stop, the
result has its keys, the report renders), never a speed. It runs on a database and a vhost of its
own, named for this run and dropped at the end, and on free loopback ports.
"""

import socket
import uuid
from dataclasses import replace

import pytest

from bench import report
from bench.config import TINY, Target
from bench.run import run
from marketplace.events import topology

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.long]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def target(tmp_path):
    suffix = uuid.uuid4().hex[:10]
    return Target(
        db_name=f"mp_bench_harness_{suffix}",
        vhost=f"marketplace-bench-test-{suffix}",
        web_port=free_port(),
        floor_port=free_port(),
        variant_port=free_port(),
        stub_port=free_port(),
        logdir=tmp_path / "logs",
        drop_at_end=True,
    )


def test_harness_runs_on_a_tiny_load(target, tmp_path):
    results = run(target, TINY, only=["floor", "api_alone", "full_stack", "drain"], use_wrk=False)

    assert results["errors"] == {}
    assert set(results["scenarios"]) == {"floor", "thin", "api_alone", "api_no_outbox", "full_stack", "drain"}
    for name in ("floor", "thin", "api_alone", "api_no_outbox", "full_stack"):
        window = results["scenarios"][name]
        assert window["tool"] == "python"
        assert window["ok"] > 0
        assert {"ok_rps", "p50_ms", "p99_ms", "sustained_ops", "cpu_ms_per_order", "rss_mib"} <= set(window)
    floor, full = results["scenarios"]["floor"], results["scenarios"]["full_stack"]
    assert {"at_60", "ramp", "backlog_growth"} <= set(full)
    assert set(full["backlog_growth"]) == {s.queue_name for s in topology.SUBSCRIBERS}
    assert {"events", "complete", "p50_ms", "p99_ms"} <= set(full["at_60"]["effects"])
    assert {"events", "complete", "p99_ms"} <= set(floor["at_60"]["done"])
    assert {"web", "relay", "recorder", *(s.name for s in topology.SUBSCRIBERS)} <= set(full["cpu_ms_per_order"])
    assert full["seller_failing"]["failed"] == 0  # the event-driven API never fails an order for a seller
    drain = results["scenarios"]["drain"]
    assert set(drain["subscribers"]) == {s.name for s in topology.subscribers_of("order.placed")}
    for drained in (*drain["subscribers"].values(), drain["noop"], drain["marker"]):  # the marker: exactly-once floor
        assert drained["done"] == drain["events"]

    output = tmp_path / "report.md"
    report.write(results, output)
    assert "## Targets" in output.read_text()
    for port in (target.web_port, target.floor_port, target.stub_port):  # every process was stopped
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"


def test_recorder_harness_drains_both_consumers(target, tmp_path):
    params = replace(TINY, recorder_events=200, recorder_reps=2)
    results = run(target, params, only=["recorder"], use_wrk=False)

    assert results["errors"] == {}
    recorder = results["scenarios"]["recorder"]
    assert recorder["events"] == 200
    assert recorder["dead_lettered_by_rabbitmq"] == 20
    assert recorder["with_failure_headers"] == 180
    assert recorder["prefetch"] > 0
    assert [rep["order"] for rep in recorder["reps"]] == [["recorder", "baseline"], ["baseline", "recorder"]]
    for rep in recorder["reps"]:
        assert rep["recorder"]["recorded"] == 200  # one FailedEvent per dead letter, x-death ones included
        for drained in (rep["recorder"], rep["baseline"]):
            assert drained["done"] == 200
            assert drained["per_second"] > 0
            assert drained["cpu_ms_per_event"] > 0
        assert rep["ratio"] > 0

    output = tmp_path / "report.md"
    output.write_text("# Benchmarks\n\n## Targets\n\nkept\n\n## Machine\n\nkept too\n")
    report.write_section(results, output)
    report.write_section(results, output)  # replaced in place, not added twice
    text = output.read_text()
    assert text.count(report.RECORDER_HEADING) == 1
    assert text.index("## Targets") < text.index(report.RECORDER_HEADING) < text.index("## Machine")
    assert "kept\n" in text
    assert "kept too" in text
