"""Dead letters for the recorder benchmark, run in a subprocess against the bench database and vhost:
``python -m bench.dead_letters COUNT [--broker-share 0.1]``.

Builds COUNT dead letters of one subscriber (``DEAD_LETTER_SUBSCRIBER``), each for an order.placed
event of its own (a fresh event id and order id), and puts them where a real failure puts them:

- most as the subscriber gives up on an event after its retries: its Celery task message (the
  envelope as the task's argument, the retries spent) with the subscriber's headers and the failure
  headers of ``failure_headers(...)`` (a real chained exception and its traceback), published to
  the dead-letter exchange with the subscriber's ``.dead`` routing key;
- ``--broker-share`` of them as RabbitMQ dead-letters a message that crashes its worker every time:
  the raw envelope published to the subscriber's queue (as a replay is), returned unacknowledged
  until the queue's delivery limit dead-letters it with ``x-death`` headers and no failure headers.

Every publish is confirmed, in batches (the confirms of a batch awaited together). The dead-letter
exchange routes each dead letter to the recorder's queue, the subscriber's ``.dead`` queue and
every other queue bound with that key (the baseline's). Prints one line ``BENCH_DEAD_LETTERS
{json}``: the event ids, the publish time, and the prefetch the recorder consumes with.
"""

import json
import os
import sys
import time
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.utils import timezone  # noqa: E402
from kombu import Connection, Consumer, Producer, Queue  # noqa: E402

from bench.config import DEAD_LETTER_SUBSCRIBER, RECORDER_DEFAULT_PREFETCH  # noqa: E402
from marketplace.celery import app  # noqa: E402
from marketplace.events import dead_letters, topology  # noqa: E402
from marketplace.events import headers as message_headers  # noqa: E402
from marketplace.events.envelope import build_envelope, rfc3339, validate_envelope  # noqa: E402
from notifications.handlers import SellerWebhookUnreachable  # noqa: E402
from orders.models import Product  # noqa: E402

BATCH = 500


def order_envelope() -> dict:
    """One real order.placed envelope (three of the seeded products, a seeded buyer), schema-checked."""
    buyer = get_user_model().objects.filter(username__startswith="bench-buyer-").order_by("id").first()
    products = list(Product.objects.filter(sku__startswith="BENCH-").select_related("seller").order_by("id")[:3])
    if buyer is None or not products:
        raise RuntimeError("no seeded buyer or products: run bench.seed first")
    lines = [
        {
            "product_id": p.pk,
            "sku": p.sku,
            "name": p.name,
            "seller_id": p.seller_id,
            "quantity": 2,
            "unit_price": str(p.price),
            "line_total": str(p.price * 2),
        }
        for p in products
    ]
    placed = timezone.now()
    data = {
        "order_id": 1,
        "status": "placed",
        "placed_at": rfc3339(placed),
        "buyer": {"id": buyer.pk, "email": buyer.email, "name": buyer.get_username()},
        "lines": lines,
        "total": str(sum(p.price * 2 for p in products)),
        "currency": settings.MARKETPLACE_CURRENCY,
    }
    envelope = build_envelope(
        event_type="order.placed", version=1, data=data, occurred_at=placed, correlation_id=str(uuid.uuid4())
    )
    return validate_envelope(envelope)


def webhook_failure() -> BaseException:
    """What the seller subscriber gives up with: its webhook unreachable, the transport error chained."""

    def post(url: str) -> None:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("POST", url))

    def notify(seller_id: int) -> None:
        url = f"https://seller-{seller_id}.example.com/hooks/orders"
        try:
            post(url)
        except httpx.TransportError as exc:
            raise SellerWebhookUnreachable(f"seller {seller_id}: {url} unreachable: {exc}") from exc

    try:
        notify(7)
    except SellerWebhookUnreachable as exc:
        return exc
    raise AssertionError("unreachable")


def recorder_prefetch() -> tuple[int, str]:
    """The prefetch the recorder consumes with, from its settings or its command module; the
    default while it names none (it polled with basic.get before)."""
    from marketplace.events.management.commands import record_dead_letters as command

    for source, label in ((settings, "settings"), (command, "record_dead_letters"), (dead_letters, "dead_letters")):
        for name in dir(source):
            value = getattr(source, name, None)
            relevant = source is not settings or "DEAD_LETTER" in name or "RECORDER" in name
            if name.isupper() and "PREFETCH" in name and relevant and isinstance(value, int) and value > 0:
                return value, f"{label}.{name}"
    return RECORDER_DEFAULT_PREFETCH, "the benchmark's default (the recorder names no prefetch)"


class ConfirmedPublisher:
    """Publishes on a channel in confirm mode without waiting per message: ``flush()`` waits for
    the confirms of everything published since the last one."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.channel = connection.channel()
        self.channel.confirm_select()
        self.channel.events["basic_ack"].add(self._ack)
        self.channel.events["basic_nack"].add(self._nack)
        self.producer = Producer(self.channel)
        self.tag = 0
        self.pending: set[int] = set()

    def _ack(self, delivery_tag: int, multiple: bool) -> None:
        self.pending -= {t for t in self.pending if t <= delivery_tag} if multiple else {delivery_tag}

    def _nack(self, delivery_tag: int, multiple: bool) -> None:
        raise RuntimeError(f"RabbitMQ refused a dead letter (nack of {delivery_tag})")

    def publish(self, body, **options) -> None:
        self.producer.publish(body, delivery_mode=2, retry=False, **options)
        self.tag += 1
        self.pending.add(self.tag)
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        deadline = time.monotonic() + 60
        while self.pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.pending)} publishes not confirmed in 60 s")
            self.connection.drain_events(timeout=60)


def give_up(publisher: ConfirmedPublisher, subscriber: topology.Subscriber, envelope: dict, exc: BaseException) -> None:
    """The subscriber's dead letter (SubscriberTask.handle -> _dead_letter) of one event."""
    attempts = settings.SUBSCRIBER_RETRY[subscriber.name]["max_retries"] + 1
    first_failed_at = message_headers.now_iso()
    message = app.amqp.as_task_v2(str(uuid.uuid4()), subscriber.task, args=[envelope], retries=attempts - 1)
    headers = {
        **message.headers,
        message_headers.FIRST_FAILED_AT: first_failed_at,
        message_headers.REPLAY_OF: "",
        message_headers.ATTEMPTS: attempts,
        **message_headers.failure_headers(exc=exc, attempts=attempts, first_failed_at=first_failed_at),
    }
    publisher.publish(
        message.body,
        exchange=topology.DEAD_LETTER_EXCHANGE.name,
        routing_key=subscriber.dead_letter_queue_name,
        headers=headers,
        serializer="json",
        **message.properties,
    )


def crash_until_dead_lettered(connection: Connection, subscriber: topology.Subscriber, count: int) -> None:
    """Return every message of the subscriber's queue unacknowledged until its delivery limit
    dead-letters it, as a worker that crashes on it would (the queue must hold only these)."""
    channel = connection.channel()
    channel.basic_qos(0, 500, False)
    returned = {"n": 0}

    def crash(message) -> None:
        message.requeue()
        returned["n"] += 1

    with Consumer(channel, queues=[Queue(subscriber.queue_name, no_declare=True)], on_message=crash):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=1)
            except TimeoutError:
                _, ready, _ = channel.queue_declare(queue=subscriber.queue_name, passive=True)
                if ready == 0:
                    break
    channel.close()
    if returned["n"] < count:
        raise RuntimeError(f"only {returned['n']} deliveries returned for {count} crashing messages")


def main(count: int, broker_share: float) -> None:
    subscriber = topology.subscriber_named(DEAD_LETTER_SUBSCRIBER)
    template, exc = order_envelope(), webhook_failure()
    first_order = 10_000_000 + int(time.time()) % 1_000_000 * 100
    envelopes = [
        dict(template, id=str(uuid.uuid4()), data=dict(template["data"], order_id=first_order + i))
        for i in range(count)
    ]
    by_broker = round(count * broker_share)
    started = time.monotonic()
    with Connection(settings.BROKER_URL) as connection:
        publisher = ConfirmedPublisher(connection)
        for envelope in envelopes[: count - by_broker]:
            give_up(publisher, subscriber, envelope, exc)
        # The crashing share: raw envelopes into the subscriber's queue (as a replay or backfill
        # publishes them), then returned until RabbitMQ dead-letters them at the delivery limit.
        for envelope in envelopes[count - by_broker :]:
            publisher.publish(
                envelope, exchange="", routing_key=subscriber.queue_name, serializer="json", message_id=envelope["id"]
            )
        publisher.flush()
        if by_broker:
            crash_until_dead_lettered(connection, subscriber, by_broker)
    prefetch, source = recorder_prefetch()
    sample = envelopes[0]
    print(
        "BENCH_DEAD_LETTERS "
        + json.dumps(
            {
                "ids": [e["id"] for e in envelopes],
                "subscriber": subscriber.name,
                "with_failure_headers": count - by_broker,
                "dead_lettered_by_rabbitmq": by_broker,
                "publish_seconds": round(time.monotonic() - started, 2),
                "envelope_bytes": len(json.dumps(sample)),
                "traceback_chars": len(message_headers.failure_headers(exc=exc, attempts=1)[message_headers.TRACEBACK]),
                "prefetch": prefetch,
                "prefetch_source": source,
            }
        )
    )


if __name__ == "__main__":
    share = float(sys.argv[sys.argv.index("--broker-share") + 1]) if "--broker-share" in sys.argv else 0.1
    main(int(sys.argv[1]), share)
