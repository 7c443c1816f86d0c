"""A seller's webhook: an external system, mocked at its edge as a real HTTP server."""

from __future__ import annotations

import http.server
import json
import threading


class SellerWebhook:
    """A seller's HTTP endpoint on localhost whose answers the test controls."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses: list[int] = []  # answers to give, in order; then `default_status`
        self.default_status = 200
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = webhook.statuses.pop(0) if webhook.statuses else webhook.default_status
                webhook.requests.append(
                    # "raw_body": the bytes as received, which is what a signature is verified against.
                    {
                        "headers": dict(self.headers),
                        "body": json.loads(body or b"null"),
                        "raw_body": body,
                        "status": status,
                    }
                )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/orders"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict]:
        return [r for r in self.requests if r["status"] < 300]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
