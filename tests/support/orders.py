"""Placing orders through the real API, and checking what it answered and changed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection

from marketplace.events.models import OutboxEvent
from marketplace.problems import PROBLEM_BASE_URI, PROBLEM_CONTENT_TYPE
from orders.models import IdempotencyKey, Order, OrderLine, Product

ORDERS_URL = "/api/orders/"
PRODUCTS_URL = "/api/products/"


def place(client, *lines: tuple[Any, Any], **extra):
    """POST an order of ``(product, quantity)`` lines (a product may be a model instance or any id)."""
    body = {
        "lines": [{"product": getattr(product, "pk", product), "quantity": quantity} for product, quantity in lines]
    }
    return client.post(ORDERS_URL, body, format="json", **extra)


def snapshot() -> dict[str, Any]:
    """Everything placing an order may change: the stock of every product and what it creates."""
    return {
        "stock": dict(Product.objects.values_list("pk", "stock")),
        "orders": Order.objects.count(),
        "order_lines": OrderLine.objects.count(),
        "outbox_events": OutboxEvent.objects.count(),
        "idempotency_keys": IdempotencyKey.objects.count(),
    }


def assert_problem(response, status: int, slug: str | None = None) -> dict[str, Any]:
    """Check an RFC 9457 problem details response and return its body."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_BASE_URI)
    if slug is not None:
        assert body["type"] == PROBLEM_BASE_URI + slug
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.wsgi_request.path
    assert body["request_id"] == response["X-Request-ID"]
    return body


def run_concurrently(tasks: list[Callable[[], Any]], *, timeout: float = 60) -> list[Any]:
    """Run each task in its own thread, all released at once by a barrier.

    Returns each task's result, or the exception it raised. Every thread has its own database
    connection (Django's are per thread) and closes it before it ends.
    """
    barrier = threading.Barrier(len(tasks))
    results: list[Any] = [None] * len(tasks)

    def run(index: int, task: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=timeout)
            results[index] = task()
        except BaseException as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, task), daemon=True) for i, task in enumerate(tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock?)"
    return results
