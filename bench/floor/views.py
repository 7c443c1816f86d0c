"""The floors and the baseline: the thinnest DRF POST views doing the same order transaction.

- ThinOrderApi: the order transaction of the real API, orders.services.order_create (lock the
  products in id order, check and take the stock, insert the order and its lines). No auth, no
  idempotency, no outbox, no publish. The buyer is the X-Buyer header.
- FloorOrderApi: the same, then on commit a publisher-confirmed publish of a small JSON event (as
  a Celery task message for the no-op subscribers) to the floor's own fanout exchange.
- BaselineOrderApi: the same transaction, then the three downstreams called inline, one after the
  other (the request-response design the event-driven API replaces); any failure fails the order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

import httpx
from django.contrib.auth import get_user_model
from django.db import transaction
from kombu import Connection, Producer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.broker import floor_exchange
from bench.config import FLOOR_TASK, ORDER_SUBSCRIBERS
from marketplace.exceptions import InvalidInput
from orders import services
from orders.models import Order

_local = threading.local()


class LineIn(serializers.Serializer):
    product = serializers.IntegerField(min_value=1)
    quantity = serializers.IntegerField(min_value=1, max_value=100)


class OrderIn(serializers.Serializer):
    lines = LineIn(many=True, allow_empty=False, max_length=50)


def place(*, buyer_id: int, lines: list[dict], on_commit: Callable[[Order], None] | None = None) -> Order | None:
    """orders.services.order_place without idempotency or outbox (its order_create); None if refused."""
    requested = [services.LineRequest(product_id=line["product"], quantity=line["quantity"]) for line in lines]
    try:
        with transaction.atomic():
            order = services.order_create(buyer=get_user_model()(pk=buyer_id), lines=requested)
            if on_commit is not None:
                transaction.on_commit(lambda: on_commit(order), robust=True)
    except (services.InsufficientStock, InvalidInput):
        return None
    return order


class ThinOrderApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request):
        data = OrderIn(data=request.data)
        data.is_valid(raise_exception=True)
        order = place(buyer_id=int(request.headers["X-Buyer"]), lines=data.validated_data["lines"], **self.hooks())
        if order is None:
            return Response({"detail": "insufficient stock"}, status=status.HTTP_409_CONFLICT)
        return self.respond(order)

    def hooks(self) -> dict:
        return {}

    def respond(self, order: Order) -> Response:
        return Response({"id": order.pk}, status=status.HTTP_201_CREATED)


def _producer() -> Producer:
    producer = getattr(_local, "producer", None)
    if producer is None:
        conn = Connection(os.environ["BENCH_BROKER_URL"], transport_options={"confirm_publish": True})
        producer = _local.producer = Producer(conn.default_channel, exchange=floor_exchange())
    return producer


def publish_placed(order: Order) -> None:
    from bench.floor.noop import app

    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, FLOOR_TASK, args=[{"order_id": order.pk, "t_commit": time.time()}])
    try:
        _producer().publish(
            message.body, headers=message.headers, serializer="json", delivery_mode=2, retry=False, **message.properties
        )
    except Exception:
        _local.producer = None  # reconnect next time; the floor has no outbox to fall back on
        raise


class FloorOrderApi(ThinOrderApi):
    def hooks(self) -> dict:
        return {"on_commit": publish_placed}


def _client() -> httpx.Client:
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = httpx.Client(base_url=os.environ["BENCH_STUB_URL"], timeout=5.0)
    return client


class BaselineOrderApi(ThinOrderApi):
    def respond(self, order: Order) -> Response:
        for subscriber in ORDER_SUBSCRIBERS:  # one downstream per subscriber, called inline
            try:
                answer = _client().post(f"/{subscriber.name}", json={"order_id": order.pk})
            except httpx.HTTPError as exc:
                return Response({"detail": f"{subscriber.name}: {exc}"}, status=status.HTTP_502_BAD_GATEWAY)
            if answer.status_code >= 300:
                return Response({"detail": f"{subscriber.name} failed"}, status=status.HTTP_502_BAD_GATEWAY)
        return super().respond(order)
