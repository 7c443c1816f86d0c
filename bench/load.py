"""Load generators: wrk (with a Lua script) for closed-loop saturation, Python threads otherwise.

Every request is a new order: a random buyer (its token, and its id in X-Buyer for the floor
views), ``lines`` distinct random products, quantity 1, and a fresh Idempotency-Key. Closed loop:
``connections`` clients send back to back for ``seconds``. Paced (open loop, Python only):
requests start on a fixed schedule of ``rate`` per second whatever the latency.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA = """
local tokens = {%(tokens)s}
local buyers = {%(buyers)s}
local products = {%(products)s}
local nlines = %(lines)d
local threads = 0
local counter = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) math.randomseed(os.time() + (tid or 0) * 7919) end
request = function()
  counter = counter + 1
  local i = math.random(#tokens)
  local picked, lines = {}, {}
  while #lines < nlines do
    local p = products[math.random(#products)]
    if not picked[p] then picked[p] = true; lines[#lines + 1] = '{"product": ' .. p .. ', "quantity": 1}' end
  end
  local key = string.format("%%x-%%x-%%d-%%d", math.random(0, 2147483647), math.random(0, 2147483647), tid or 0, counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Token " .. tokens[i],
    ["X-Buyer"] = tostring(buyers[i]), ["Idempotency-Key"] = key}, '{"lines": [' .. table.concat(lines, ", ") .. ']}')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "p50": %%d, "p90": %%d, "p99": %%d, "max": %%d}\\n', summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class Workload:
    tokens: list[str]
    buyer_ids: list[int]
    products: list[int]
    lines: int = 3

    def body(self, rng: random.Random) -> tuple[bytes, dict[str, str]]:
        i = rng.randrange(len(self.tokens))
        lines = [{"product": p, "quantity": 1} for p in rng.sample(self.products, self.lines)]
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Token {self.tokens[i]}",
            "X-Buyer": str(self.buyer_ids[i]),
            "Idempotency-Key": str(uuid.uuid4()),
        }
        return json.dumps({"lines": lines}).encode(), headers


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(tool: str, latencies: list[float], statuses: dict, started: float, ended: float, **extra) -> dict:
    ok = sum(n for s, n in statuses.items() if isinstance(s, int) and 200 <= s < 300)
    total = sum(statuses.values())
    seconds = max(ended - started, 1e-9)
    return {
        "tool": tool,
        "seconds": round(seconds, 2),
        "requests": total,
        "ok": ok,
        "failed": total - ok,
        "rps": round(total / seconds, 1),
        "ok_rps": round(ok / seconds, 1),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies, default=None)),
        "statuses": {str(k): v for k, v in statuses.items()},
        "started_at": started,
        "ended_at": ended,
        **extra,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def closed_loop(url: str, work: Workload, *, seconds: float, connections: int, use_wrk: bool | None = None) -> dict:
    if use_wrk is None:
        use_wrk = wrk_available()
    if use_wrk:
        return _wrk(url, work, seconds=seconds, connections=connections)
    return _python(url, work, seconds=seconds, threads=connections, rate=None)


def paced(url: str, work: Workload, *, rate: float, seconds: float) -> dict:
    threads = int(min(96, max(8, rate * 0.4 + 8)))
    result = _python(url, work, seconds=seconds, threads=threads, rate=rate)
    result["offered_rps"] = round(rate, 1)
    result["requests_planned_seconds"] = seconds
    return result


def _wrk(url: str, work: Workload, *, seconds: float, connections: int) -> dict:
    script = Path(tempfile.gettempdir()) / f"bench-wrk-{uuid.uuid4().hex}.lua"
    script.write_text(
        LUA
        % {
            "tokens": ", ".join(f'"{t}"' for t in work.tokens),
            "buyers": ", ".join(map(str, work.buyer_ids)),
            "products": ", ".join(map(str, work.products)),
            "lines": work.lines,
        }
    )
    threads = min(2, connections)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:.0f}s", "--timeout", "10s"]
    started = time.time()
    try:
        out = subprocess.run([*argv, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        script.unlink(missing_ok=True)
    ended = time.time()
    match = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if match is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    w = json.loads(match.group(1))
    failed = w["status"] + w["connect"] + w["read"] + w["write"] + w["timeout"]
    seconds = w["duration_us"] / 1e6
    return {
        "tool": "wrk",
        "seconds": round(seconds, 2),
        "requests": w["requests"],
        "ok": w["requests"] - w["status"],
        "failed": failed,
        "rps": round(w["requests"] / seconds, 1),
        "ok_rps": round((w["requests"] - w["status"]) / seconds, 1),
        **{f"{q}_ms": round(w[q] / 1000, 2) for q in ("p50", "p90", "p99")},
        "max_ms": round(w["max"] / 1000, 2),
        "statuses": {"non-2xx": w["status"], "socket errors": failed - w["status"]},
        "started_at": started,
        "ended_at": ended,
    }


def _python(url: str, work: Workload, *, seconds: float, threads: int, rate: float | None) -> dict:
    parts = urlsplit(url)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict = {}
    slot = iter(range(10**9))
    started = time.time()
    t0 = time.monotonic()
    deadline = t0 + seconds
    lag = [0.0]

    def client(n: int) -> None:
        rng = random.Random(n * 7919 + int(started))
        conn = None
        while True:
            if rate is not None:
                with lock:
                    due = t0 + next(slot) / rate
                if due >= deadline:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                lag[0] = max(lag[0], time.monotonic() - due)
            elif time.monotonic() >= deadline:
                break
            body, headers = work.body(rng)
            begin = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                conn.request("POST", parts.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                code = response.status
            except (OSError, http.client.HTTPException) as exc:
                code, conn = type(exc).__name__, None
            elapsed = time.perf_counter() - begin
            with lock:
                latencies.append(elapsed)
                statuses[code] = statuses.get(code, 0) + 1
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 30)
    return summarize("python", latencies, statuses, started, time.time(), max_schedule_lag_ms=_ms(lag[0]))
