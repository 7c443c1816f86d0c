"""The downstreams of the request-response baseline: every POST sleeps --delay and answers 200.

``POST /_fail/<path>`` makes POSTs to /<path> answer 503 from then on, ``POST /_heal`` undoes all.
Run as ``python -m bench.stub --port 8103``; loopback only.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAILING: set[str] = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK would
    # add ~40 ms to every keep-alive call.
    disable_nagle_algorithm = True
    delay = 0.05

    def do_GET(self):
        self._answer(200, b"ok")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/_fail/"):
            FAILING.add("/" + self.path.removeprefix("/_fail/"))
            return self._answer(200, b"failing")
        if self.path == "/_heal":
            FAILING.clear()
            return self._answer(200, b"healed")
        time.sleep(self.delay)
        self._answer(503 if self.path in FAILING else 200, b"{}")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    Handler.delay = args.delay
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
