"""The harness: servers, edges and processes brought up together, torn down together.

    with Harness(quick=True) as h:
        row = kinds.worker_killed(h, "order_confirmation")

Every fault row gets buyers of its own (so CustomerProfile counts belong to one row), places its
orders through the API, causes its fault, declares when the fault ended and which intervals could
break a commit after a send, and calls ``h.measure`` for its row.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path

from kombu import Connection, Producer

from marketplace.events import topology
from tests.faults.harness.edges import SellerWebhook, SmtpSink
from tests.faults.harness.effects import Db, EffectsCounter, Hazards, Row, wait_for_effects
from tests.faults.harness.load import LoadDriver, OrderStream
from tests.faults.harness.servers import Servers, free_port, kill_processes_of
from tests.faults.harness.system import System

WEBHOOK_SELLER = "Canvas Goods"
BUYERS = 400


class Harness:
    def __init__(
        self, *, quick: bool = False, db_outage_seconds: float | None = None, keep_logs: Path | None = None, log=print
    ):
        self.quick = quick
        self.keep_logs = keep_logs
        self.db_outage_seconds = db_outage_seconds
        self.log = log
        self.servers: Servers | None = None
        self.smtp: SmtpSink | None = None
        self.webhook: SellerWebhook | None = None
        self.system: System | None = None
        self.db: Db | None = None
        self._next_buyer = 0
        self.initial_stock: dict[int, int] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Harness:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        started = time.monotonic()
        self.servers = Servers()
        self.log(f"run directory {self.servers.workdir}")
        self.servers.start()
        self.log(
            f"postgres cluster {self.servers.postgres.name} on 127.0.0.1:{self.servers.postgres.port}, "
            f"rabbitmq node {self.servers.rabbit.nodename} on 127.0.0.1:{self.servers.rabbit.port}"
        )
        self.smtp = SmtpSink(free_port()).start()
        self.webhook = SellerWebhook(free_port()).start()
        self.system = System(
            workdir=self.servers.workdir,
            database_url=self.servers.postgres.url,
            broker_url=self.servers.rabbit.url,
            management_url=self.servers.rabbit.management_url,
            smtp_port=self.smtp.port,
            web_port=free_port(),
        )
        self.db = Db(self.servers.postgres.url.replace("postgres://", "postgresql://"))
        seed = self.system.prepare(buyers=BUYERS)
        self.buyers = seed["buyers"]
        self.products = seed["products"]
        self.sellers = {s["id"]: s for s in seed["sellers"]}
        self.webhook_seller_ids = {s["id"] for s in seed["sellers"] if s["name"] == WEBHOOK_SELLER}
        self.db.query(
            "UPDATE orders_seller SET webhook_url = %s WHERE id = ANY(%s)",
            (self.webhook.url, list(self.webhook_seller_ids)),
        )
        self.initial_stock = {p["id"]: p["stock"] for p in self.products}
        self.driver = LoadDriver(base_url=f"http://127.0.0.1:{self.system.web_port}", products=self.products)
        self.counter = EffectsCounter(
            db=self.db,
            smtp=self.smtp,
            webhook=self.webhook,
            sellers=self.sellers,
            webhook_seller_ids=self.webhook_seller_ids,
        )
        self.system.start_all()
        self.log(f"processes up: {', '.join(self.system.procs)} ({time.monotonic() - started:.0f}s)")
        for note in self.system.notes:
            self.log(f"note: {note}")

    def close(self) -> None:
        # A second Ctrl-C must not cut the teardown short.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            self._close()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    def _close(self) -> None:
        for step in (
            lambda: self.keep_logs and self.servers and self._copy_logs(),
            lambda: self.system and self.system.close(),
            lambda: self.db and self.db.close(),
            lambda: self.smtp and self.smtp.stop(),
            lambda: self.webhook and self.webhook.stop(),
            lambda: self.servers and kill_processes_of(self.servers.workdir),
            lambda: self.servers and self.servers.close(),
        ):
            try:
                step()
            except Exception as exc:
                self.log(f"teardown: {type(exc).__name__}: {exc}")

    def _copy_logs(self) -> None:
        self.keep_logs.mkdir(parents=True, exist_ok=True)
        for path in [*(self.servers.workdir / "logs").glob("*.log"), self.servers.workdir / "postgresql.log"]:
            if path.exists():
                shutil.copy(path, self.keep_logs / path.name)

    # --- helpers for fault kinds ------------------------------------------------------------

    @property
    def rabbit(self):
        return self.servers.rabbit

    @property
    def postgres(self):
        return self.servers.postgres

    def buyers_for_row(self, count: int) -> list[dict]:
        if self._next_buyer + count > len(self.buyers):
            raise RuntimeError("out of ledger buyers: raise BUYERS")
        chosen = self.buyers[self._next_buyer : self._next_buyer + count]
        self._next_buyer += count
        return chosen

    def scarce_product(self, stock: int) -> int:
        """A product of the webhook seller with little stock, so concurrent orders contend for it."""
        seller = next(iter(self.webhook_seller_ids))
        sku = f"LEDGER-{time.time_ns()}"
        product_id = self.db.query(
            "INSERT INTO orders_product (seller_id, sku, name, price, stock, is_active, created_at)"
            " VALUES (%s, %s, 'Scarce ledger item', 5.00, %s, true, now()) RETURNING id",
            (seller, sku, stock),
        )[0][0]
        self.initial_stock[product_id] = stock
        return product_id

    def place(self, count: int, buyers: list[dict], **kwargs) -> OrderStream:
        return self.driver.place(count, buyers, **kwargs)

    def broker_connection(self, vhost: str = "") -> Connection:
        return Connection(self.rabbit.url + vhost, connect_timeout=5)

    def publish_raw(self, body: bytes, *, routing_key: str = "", exchange: str | None = None, **properties) -> None:
        """Publish bytes as they are: to the fanout (default) or, with exchange="", to one queue."""
        with self.broker_connection() as conn:
            producer = Producer(conn.default_channel)
            producer.publish(
                body,
                exchange=topology.EVENTS_EXCHANGE.name if exchange is None else exchange,
                routing_key=routing_key,
                serializer=None,
                content_type=properties.pop("content_type", "application/json"),
                content_encoding=properties.pop("content_encoding", "utf-8"),
                delivery_mode=2,
                **properties,
            )

    def envelopes(self, order_ids: list[int]) -> list[dict]:
        rows = self.db.query(
            "SELECT envelope FROM events_outboxevent WHERE (envelope->'data'->>'order_id')::bigint = ANY(%s)",
            (order_ids,),
        )
        return [row[0] if isinstance(row[0], dict) else json.loads(row[0]) for row in rows]

    def queue_depths(self) -> dict[str, int]:
        depths = {}
        with self.broker_connection() as conn:
            for subscriber in topology.SUBSCRIBERS:
                with contextlib.suppress(Exception):
                    channel = conn.channel()
                    depths[subscriber.name] = channel.queue_declare(subscriber.queue_name, passive=True).message_count
                    channel.close()
        return depths

    def quiesce(self, timeout: float = 60) -> None:
        """Heal the edges, restart any dead process, and wait for the subscriber queues to drain."""
        self.smtp.heal()
        self.webhook.heal()
        (self.system.control_dir / "crash_events").unlink(missing_ok=True)
        restarted = self.system.restart_dead()
        if restarted:
            self.log(f"restarted {restarted}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not any(self.queue_depths().values()):
                    return
            except Exception:  # noqa: S110 - the management API not answering yet: ask again until the deadline
                pass
            time.sleep(0.5)
        self.log(f"queues not drained after {timeout}s: {self.queue_depths()}")

    def measure(
        self,
        row: Row,
        *,
        buyers: list[dict],
        streams: list[OrderStream],
        started: float,
        fault_end: float,
        hazards: Hazards | None = None,
        deadline: float = 60,
        expected_dead_letters: int = 0,
        max_recovery: float | None = None,
        problems: list[str] | None = None,
    ) -> Row:
        for stream in streams:
            stream.wait()
        accepted = {r.order_id for s in streams for r in s.accepted}
        row.accepted = len(accepted)
        statuses: dict[str, int] = {}
        for stream in streams:
            for label, count in stream.statuses().items():
                statuses[label] = statuses.get(label, 0) + count
        if set(statuses) - {"201"}:
            row.notes.append(f"answers: {statuses}")
        observation, recovery = wait_for_effects(
            self.counter,
            buyer_ids=[b["id"] for b in buyers],
            accepted_order_ids=accepted,
            hazards=hazards or Hazards(),
            fault_end=fault_end,
            deadline=deadline,
        )
        row.deadline_seconds = deadline
        for name, proc in self.system.procs.items():
            if not proc.alive:
                lines = [line for line in proc.log_text()[proc.log_offset :].splitlines() if line.strip()]
                last = [line for line in lines if "Error" in line][-1:] or lines[-1:]
                row.notes.append(
                    f"{name} exited on its own (code {proc.process.returncode}): {last[0][:160] if last else ''}"
                )
                problems = [*(problems or []), f"{name} process exited"]
        row.lost = observation.lost
        row.duplicated = observation.duplicated
        row.duplicated_window = observation.duplicated_window
        row.notes += observation.notes
        row.recovery_seconds = None if recovery is None else round(recovery, 1)
        row.oversold, stock_notes = self.counter.oversold(self.initial_stock)
        row.notes += stock_notes[:3]
        row.dead_lettered = self.counter.failed_events_since(started)
        row.seconds = round(time.time() - started, 1)
        problems = list(problems or [])
        if row.lost:
            problems.append(f"lost {row.lost}")
        if row.duplicated:
            problems.append(f"duplicated {row.duplicated}")
        if row.oversold:
            problems.append(f"oversold {row.oversold}")
        if row.dead_lettered != expected_dead_letters:
            problems.append(f"dead-lettered {row.dead_lettered}, expected {expected_dead_letters}")
        if max_recovery is not None and recovery is not None and recovery > max_recovery:
            problems.append(f"recovered in {recovery:.0f}s > {max_recovery:.0f}s")
        if max_recovery is not None and recovery is None:
            problems.append(f"not recovered within {deadline:.0f}s")
        row.verdict = "pass" if not problems else "FAIL: " + "; ".join(problems)
        return row
