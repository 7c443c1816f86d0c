"""The outside world, mocked at its edge with real servers: an SMTP sink and a seller webhook.

Both record every message they *accept* with the time of acceptance, and can be told to fail:

    SmtpSink.mode        "ok" | "refuse" (451 to every recipient) ; .delay seconds before 250
    SellerWebhook.mode   "ok" | "down" (port closed: connection refused) | "hang" (answers only
                         after .hang_seconds, longer than SELLER_WEBHOOK_TIMEOUT) | "status:<code>"
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller


@dataclass
class Delivery:
    """One message accepted at the edge."""

    at: float
    recipient: str
    event_id: str | None
    subject: str = ""
    key: str = ""  # webhook Idempotency-Key
    headers: dict = field(default_factory=dict)


class SmtpSink:
    def __init__(self, port: int):
        self.port = port
        self.mode = "ok"
        self.delay = 0.0
        self._lock = threading.Lock()
        self.accepted: list[Delivery] = []
        self.refused = 0
        self.controller = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=port, ready_timeout=10)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def heal(self) -> None:
        self.mode = "ok"
        self.delay = 0.0

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.accepted)

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self.accepted.append(delivery)


class _SmtpHandler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.sink.mode == "refuse":
            self.sink.refused += 1
            return "451 4.3.0 mailbox temporarily unavailable (fault ledger)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        now = time.time()
        for recipient in envelope.rcpt_tos:
            self.sink._record(
                Delivery(
                    at=now,
                    recipient=recipient.lower(),
                    event_id=message.get("X-Marketplace-Event-Id"),
                    subject=str(message.get("Subject", "")),
                    headers={name.lower(): str(value) for name, value in message.items()},
                )
            )
        return "250 Message accepted for delivery"


class SellerWebhook:
    def __init__(self, port: int, hang_seconds: float = 8.0):
        self.port = port
        self.mode = "ok"
        self.hang_seconds = hang_seconds
        self._lock = threading.Lock()
        self.accepted: list[Delivery] = []
        self.unanswered = 0  # requests received while hanging or answered with an error
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/orders"

    def start(self) -> SellerWebhook:
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = webhook.mode
                if mode == "hang":
                    webhook.unanswered += 1
                    time.sleep(webhook.hang_seconds)
                    self._answer(503)
                    return
                status = int(mode.split(":", 1)[1]) if mode.startswith("status:") else 200
                if status < 300:
                    with webhook._lock:
                        webhook.accepted.append(
                            Delivery(
                                at=time.time(),
                                recipient=webhook.url,
                                event_id=self.headers.get("X-Marketplace-Event-Id"),
                                key=self.headers.get("Idempotency-Key", ""),
                            )
                        )
                else:
                    webhook.unanswered += 1
                self._answer(status)

            def _answer(self, status: int):
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="seller-webhook", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def go_down(self) -> None:
        """Close the port: senders get 'connection refused'."""
        self.mode = "down"
        self.stop()

    def heal(self) -> None:
        self.mode = "ok"
        if self.server is None:
            self.start()

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.accepted)
