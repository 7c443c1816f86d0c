"""One benchmark run: set up the bench database and vhost, start the processes, run the scenarios
in order, stop everything (always), return the results as one dict."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench import broker, data, pipeline, recorder, scenarios
from bench.config import PYTHON, ROOT, Params, Target
from bench.processes import Stack, log, wait_http

SCENARIOS = {
    "floor": scenarios.floor,
    "baseline": scenarios.baseline,
    "api_alone": scenarios.api_alone,  # thin view, API alone, API without outbox: three results
    "full_stack": pipeline.full_stack,
    "task_events_off": pipeline.task_events_off,
    "drain": pipeline.drain,
    "recorder": recorder.recorder,  # the dead-letter recorder against a plain consumer
}
# Scenarios that start what they measure themselves and need none of the web stack.
STANDALONE = {"recorder"}


def run(target: Target, params: Params, *, only: list[str] | None = None, use_wrk: bool | None = None) -> dict:
    results: dict = {"machine": machine(), "params": asdict(params), "scenarios": {}, "errors": {}}
    results["machine"]["loadavg_start"] = loadavg()
    results["code"] = {"start": code_version()}
    stack = Stack(target)
    started = time.monotonic()
    try:
        broker.create_vhost(target)
        broker.declare_floor(target)
        log(f"preparing database {target.db_name} and vhost {target.vhost}")
        work = data.prepare(target, params)
        data.set_seller_webhooks(target, "")
        if not only or not set(only) <= STANDALONE:
            stub = stack.start("stub", [PYTHON, "-m", "bench.stub", "--port", str(target.stub_port)])
            web = stack.start_web("web", target.web_port, wait=False)
            floor_web = stack.start_web("floor-web", target.floor_port, settings="bench.floor.settings", wait=False)
            stack.start_procfile("relay")
            stack.start_procfile("recorder")
            wait_http(stub, target.stub_port, "/")
            wait_http(web, target.web_port, "/api/products/?page_size=1")
            wait_http(floor_web, target.floor_port, "/api/products/?page_size=1")
        ctx = scenarios.Context(target, params, stack, work, use_wrk=use_wrk)
        for name, scenario in SCENARIOS.items():
            if only and name not in only:
                continue
            if name == "task_events_off" and not params.flower_runs:
                continue
            log(f"scenario {name}")
            begin = time.monotonic()
            try:
                result = scenario(ctx)
                elapsed = round(time.monotonic() - begin, 1)
                if name == "api_alone":
                    results["scenarios"].update(result)
                    results["scenarios"]["api_alone"]["elapsed_seconds"] = elapsed
                else:
                    results["scenarios"][name] = {**result, "elapsed_seconds": elapsed}
            except Exception as exc:
                log(f"scenario {name} failed: {exc!r}")
                results["errors"][name] = "".join(traceback.format_exception_only(exc)).strip()[-1500:]
                traceback.print_exc()
    finally:
        log("stopping every process the benchmark started")
        stack.stop_all()
        if target.drop_at_end:
            broker.delete_vhost(target)
            data.drop_database(target)
    results["machine"]["loadavg_end"] = loadavg()
    results["code"]["end"] = code_version()
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    return results


def code_version() -> str:
    """The commit measured, and whether the working tree differs from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "marketplace", "orders", "notifications",
             "segmentation", "Procfile"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def machine() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    mem = next(
        (
            int(ln.split()[1]) // 1024
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    versions = {}
    for package in ("Django", "djangorestframework", "celery", "kombu", "gunicorn", "psycopg"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": broker.rabbitmq_version(),
        "packages": versions,
        "wrk": bool(__import__("shutil").which("wrk")),
    }
