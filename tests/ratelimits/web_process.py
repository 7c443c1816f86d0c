"""A stand-in web process for tests/ratelimits/test_concurrency.py: from several threads, each with
its own database connection, either places orders through the API's whole request stack
(middleware, authentication, throttles, view) or only checks the order limit, as fast as it can;
then prints what it was answered as JSON.

    python -m tests.ratelimits.web_process orders TOKEN:PRODUCT_ID PER_THREAD THREADS LIMIT GO_FILE
    python -m tests.ratelimits.web_process checks CLIENT PER_THREAD THREADS LIMIT GO_FILE

It prints "ready" once Django is set up, then waits for GO_FILE to exist, so that the processes a
test starts all begin at the same moment.
"""

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from marketplace.ratelimits import counters  # noqa: E402
from marketplace.ratelimits.rates import parse_rate  # noqa: E402
from marketplace.ratelimits.throttles import ORDERS, UNAUTHENTICATED  # noqa: E402


def placing_orders(target: str, limit: str) -> Callable[[], object]:
    token, product_id = target.split(":")
    # "testserver" is in ALLOWED_HOSTS only when pytest-django adds it, in the test process.
    client = APIClient(HTTP_HOST="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    body = {"lines": [{"product": int(product_id), "quantity": 1}]}
    return lambda: client.post("/api/orders/", body, format="json").status_code


def checking(client: str, limit: str) -> Callable[[], object]:
    rate = parse_rate(limit)
    return lambda: counters.count(scope=ORDERS, client=client, rate=rate).allowed


def main(mode: str, target: str, per_thread: int, threads: int, limit: str, go_file: Path) -> None:
    results: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        attempt = (placing_orders if mode == "orders" else checking)(target, limit)
        try:
            for _ in range(per_thread):
                result = attempt()
                with lock:
                    results.append(result)
        finally:
            connection.close()

    rates = {ORDERS: limit, UNAUTHENTICATED: None}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        print("ready", flush=True)
        while not go_file.exists():
            time.sleep(0.002)
        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    mode, target, per_thread, threads, limit, go_file = sys.argv[1:]
    main(mode, target, int(per_thread), int(threads), limit, Path(go_file))
