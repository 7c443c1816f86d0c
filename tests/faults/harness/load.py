"""The load driver: places orders through the real HTTP API, the way a client would.

Each order has its own Idempotency-Key. A request that fails without an answer (connection
refused or reset, timeout) or with a 5xx is retried with the same key, a bounded number of times,
so an order committed just before the web process died is answered from the key, not placed twice.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

MAX_ATTEMPTS = 8
RETRY_PAUSE = 0.5


@dataclass
class Attempted:
    key: str
    buyer_id: int
    lines: list[dict]
    status: int | None = None
    order_id: int | None = None
    attempts: int = 0
    error: str = ""
    at: float = 0.0
    seconds: float = 0.0  # from the first attempt until the answer that ended it


@dataclass
class OrderStream:
    """Orders placed by one fault row (possibly in the background while the fault happens)."""

    results: list[Attempted] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def accepted(self) -> list[Attempted]:
        return [r for r in self.results if r.status == 201]

    def wait(self, timeout: float = 600) -> OrderStream:
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TimeoutError("order stream did not finish")
        return self

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            label = str(r.status) if r.status else f"no answer ({r.error[:40]})"
            counts[label] = counts.get(label, 0) + 1
        return counts


class LoadDriver:
    def __init__(self, *, base_url: str, products: list[dict], seed: int = 7):
        self.base_url = base_url
        self.products = products
        self.random = random.Random(seed)
        self._lock = threading.Lock()

    def _lines(self, extra_product: int | None) -> list[dict]:
        with self._lock:
            chosen = self.random.sample(self.products, k=self.random.randint(1, min(3, len(self.products))))
            lines = [{"product": p["id"], "quantity": self.random.randint(1, 2)} for p in chosen]
            if extra_product is not None and self.random.random() < 0.3:
                lines.append({"product": extra_product, "quantity": 1})
        return lines

    def place(
        self,
        count: int,
        buyers: list[dict],
        *,
        concurrency: int = 4,
        rate: float | None = None,
        scarce_product: int | None = None,
        background: bool = False,
        max_seconds: float = 300,
    ) -> OrderStream:
        """Place ``count`` orders, round-robin over ``buyers``; at most ``rate`` per second."""
        stream = OrderStream()
        deadline = time.monotonic() + max_seconds

        def one(i: int) -> None:
            if rate:
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
            if time.monotonic() > deadline:
                return
            buyer = buyers[i % len(buyers)]
            attempt = Attempted(key=str(uuid.uuid4()), buyer_id=buyer["id"], lines=self._lines(scarce_product))
            self._send(attempt, buyer["token"], deadline)
            stream.results.append(attempt)

        def run() -> None:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="order") as pool:
                list(pool.map(one, range(count)))

        start = time.monotonic()
        if background:
            stream.thread = threading.Thread(target=run, name="order-stream", daemon=True)
            stream.thread.start()
        else:
            run()
        return stream

    def _send(self, attempt: Attempted, token: str, deadline: float) -> None:
        headers = {"Authorization": f"Token {token}", "Idempotency-Key": attempt.key}
        first_try = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while attempt.attempts < MAX_ATTEMPTS and time.monotonic() < deadline:
                attempt.attempts += 1
                try:
                    response = client.post("/api/orders/", json={"lines": attempt.lines}, headers=headers)
                except httpx.HTTPError as exc:
                    attempt.error = f"{type(exc).__name__}: {exc}"
                    time.sleep(RETRY_PAUSE * attempt.attempts)
                    continue
                attempt.status = response.status_code
                attempt.at = time.time()
                attempt.seconds = time.monotonic() - first_try
                if response.status_code == 201:
                    attempt.order_id = response.json()["id"]
                    return
                if response.status_code < 500:
                    return  # 409 out of stock and the like: an answer, not a fault
                time.sleep(RETRY_PAUSE * attempt.attempts)
