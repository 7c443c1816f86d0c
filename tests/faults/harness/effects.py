"""The effects counter: what the outside world saw for every order a fault row placed.

Expected effects of one committed order (its ``order.placed`` event id E):

    confirmation   exactly one email to the buyer carrying X-Marketplace-Event-Id: E
    seller         per seller in the order, exactly one email (X-Marketplace-Event-Id: E) or, for a
                   webhook seller, exactly one 2xx-answered POST with Idempotency-Key: E:<seller>
    segmentation   the buyer's CustomerProfile.order_count equals the buyer's orders (each fault
                   row uses buyers of its own, so a profile counts that row's orders only)

lost        an expected effect still missing at the recovery deadline (plus any 201 whose order
            is not in the database, and any committed order without an outbox event)
duplicated  copies beyond the first. A copy is a *send-then-commit* duplicate when the copy
            before it was accepted while its sender's commit could fail: inside a hazard interval
            the fault row declares (database stopped, backends terminated, worker SIGKILLed),
            widened by the send timeout. Every other duplicate is counted as outside the window.
oversold    units sold beyond a product's initial stock, plus units of negative stock.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg

SEND_TIMEOUT_SLACK = 6.0  # EMAIL_TIMEOUT (5 s) + 1 s: a send that began before a hazard may finish in it


@dataclass
class Row:
    fault: str
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicated_window: int = 0
    oversold: int = 0
    dead_lettered: int = 0
    recovery_seconds: float | None = None
    deadline_seconds: float = 0.0
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Db:
    """Plain SQL against the ledger's database; reconnects after an outage."""

    def __init__(self, url: str):
        self.url = url
        self.conn: psycopg.Connection | None = None

    def query(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        for attempt in range(2):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
                with self.conn.cursor() as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                self.close()
                if attempt:
                    raise
        return []

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


@dataclass
class Hazards:
    """Intervals (epoch seconds) in which a sender's commit could fail after its send succeeded."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    def add(self, start: float, end: float | None = None) -> None:
        self.intervals.append((start - SEND_TIMEOUT_SLACK, (end or start) + 1.0))

    def cover(self, t: float) -> bool:
        return any(start <= t <= end for start, end in self.intervals)


@dataclass
class Observation:
    complete: bool
    lost: int
    duplicated: int
    duplicated_window: int
    orders: int
    notes: list[str]


class EffectsCounter:
    def __init__(self, *, db: Db, smtp, webhook, sellers: dict[int, dict], webhook_seller_ids: set[int]):
        self.db = db
        self.smtp = smtp
        self.webhook = webhook
        self.sellers = sellers
        self.webhook_seller_ids = webhook_seller_ids

    def observe(self, *, buyer_ids: list[int], accepted_order_ids: set[int], hazards: Hazards) -> Observation:
        notes: list[str] = []
        orders = dict(self.db.query("SELECT id, buyer_id FROM orders_order WHERE buyer_id = ANY(%s)", (buyer_ids,)))
        order_ids = list(orders)
        emails = {
            uid: email
            for uid, email in self.db.query("SELECT id, email FROM auth_user WHERE id = ANY(%s)", (buyer_ids,))
        }
        sellers_of: dict[int, set[int]] = defaultdict(set)
        for order_id, seller_id in self.db.query(
            "SELECT DISTINCT order_id, seller_id FROM orders_orderline WHERE order_id = ANY(%s)", (order_ids,)
        ):
            sellers_of[order_id].add(seller_id)
        event_of = {
            order_id: str(event_id)
            for event_id, order_id in self.db.query(
                "SELECT event_id, (envelope->'data'->>'order_id')::bigint FROM events_outboxevent"
                " WHERE event_type = 'order.placed' AND (envelope->'data'->>'order_id')::bigint = ANY(%s)",
                (order_ids,),
            )
        }
        profiles = dict(
            self.db.query(
                "SELECT buyer_id, order_count FROM segmentation_customerprofile WHERE buyer_id = ANY(%s)", (buyer_ids,)
            )
        )

        copies: dict[tuple, list[float]] = defaultdict(list)
        for delivery in self.smtp.snapshot():
            copies[("email", delivery.event_id, delivery.recipient)].append(delivery.at)
        for delivery in self.webhook.snapshot():
            copies[("webhook", delivery.key)].append(delivery.at)

        lost = duplicated = window = 0
        missing_201 = accepted_order_ids - set(orders)
        if missing_201:
            lost += len(missing_201)
            notes.append(f"{len(missing_201)} order(s) answered 201 but not in the database")
        no_event = 0
        for order_id, buyer_id in orders.items():
            event = event_of.get(order_id)
            expected = [("email", event, emails[buyer_id].lower())]
            for seller_id in sorted(sellers_of[order_id]):
                if seller_id in self.webhook_seller_ids:
                    expected.append(("webhook", f"{event}:{seller_id}"))
                else:
                    expected.append(("email", event, self.sellers[seller_id]["email"].lower()))
            if event is None:
                no_event += 1
                lost += len(expected)
                continue
            for effect in expected:
                times = sorted(copies.get(effect, ()))
                if not times:
                    lost += 1
                    continue
                for earlier in times[:-1]:
                    if hazards.cover(earlier):
                        window += 1
                    else:
                        duplicated += 1
        if no_event:
            notes.append(f"{no_event} committed order(s) without an outbox event")
        per_buyer = Counter(orders.values())
        for buyer_id in buyer_ids:
            have, want = profiles.get(buyer_id, 0), per_buyer.get(buyer_id, 0)
            lost += max(0, want - have)
            duplicated += max(0, have - want)
        return Observation(
            complete=lost == 0,
            lost=lost,
            duplicated=duplicated,
            duplicated_window=window,
            orders=len(orders),
            notes=notes,
        )

    def oversold(self, initial_stock: dict[int, int]) -> tuple[int, list[str]]:
        notes = []
        oversold = 0
        for product_id, stock, sold in self.db.query(
            "SELECT p.id, p.stock, COALESCE(SUM(l.quantity), 0) FROM orders_product p"
            " LEFT JOIN orders_orderline l ON l.product_id = p.id GROUP BY p.id, p.stock"
        ):
            initial = initial_stock.get(product_id)
            if initial is None:
                continue
            oversold += max(0, sold - initial) + max(0, -stock)
            if stock != initial - sold:
                notes.append(f"product {product_id}: stock {stock} != initial {initial} - sold {sold}")
        return oversold, notes

    def failed_events_since(self, since: float) -> int:
        return self.db.query(
            "SELECT count(*) FROM events_failedevent WHERE first_failed_at >= to_timestamp(%s)", (since,)
        )[0][0]


def wait_for_effects(
    counter: EffectsCounter,
    *,
    buyer_ids: list[int],
    accepted_order_ids: set[int],
    hazards: Hazards,
    fault_end: float,
    deadline: float,
    settle: float = 4.0,
    poll: float = 0.5,
) -> tuple[Observation, float | None]:
    """Poll until every expected effect was seen (then ``settle`` more seconds for late duplicates)
    or ``deadline`` seconds after the fault ended. Returns the last observation and the recovery
    time (seconds from fault end until all effects were seen), None if they never all were."""
    limit = fault_end + deadline
    complete_at = None
    last = None
    while True:
        try:
            last = counter.observe(buyer_ids=buyer_ids, accepted_order_ids=accepted_order_ids, hazards=hazards)
        except psycopg.Error as exc:  # the database may still be coming back
            last = last or Observation(False, -1, 0, 0, 0, [f"database unreadable: {exc}"])
        now = time.time()
        if last.complete and complete_at is None:
            complete_at = now
        if complete_at is not None and now - complete_at >= settle:
            break
        if complete_at is None and now > limit:
            break
        time.sleep(poll)
    recovery = None if complete_at is None else max(0.0, complete_at - fault_end)
    return last, recovery
