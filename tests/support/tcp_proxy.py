"""A TCP forwarder a test can cut or blackhole: the network between a process and a server, for real.

``cut()`` closes the listening socket and every open connection, so the client's next query fails
and new connections are refused, exactly as when the server host goes away; ``restore()``
listens again on the same port.

``blackhole()`` is a network partition that drops traffic silently instead: no byte passes in
either direction and nothing is closed or refused. Bytes sent meanwhile are held, the way TCP keeps
retransmitting them, and go through once ``heal()`` is called; a connection opened meanwhile is
accepted but hears nothing until then. A side that closes during the partition is not heard
by the other side (its FIN is lost); once healed, the other side's next bytes are answered with a
reset, as a real peer that no longer knows the connection answers. So a client that only waits to
read, without heartbeats or keepalives of its own, never learns that its server side is gone.

A userspace proxy's kernel acknowledges every segment and keepalive probe itself, so TCP keepalives
and TCP_USER_TIMEOUT of the client never fire through it: only application-level timeouts and
heartbeats see the partition.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._healed = threading.Event()
        self._healed.set()
        self.restore()

    @property
    def blackholed(self) -> bool:
        return not self._healed.is_set()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._healed.set()  # a blackholed pipe wakes up to find its sockets closed

    close = cut

    def blackhole(self) -> None:
        """Stop forwarding without closing anything: a partition that drops packets silently."""
        self._healed.clear()

    def heal(self) -> None:
        """End the partition: held bytes and held connections go through."""
        self._healed.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    return
                self._connections.add(client)
            # Connecting upstream waits out a partition: the client hears nothing until it heals.
            threading.Thread(target=self._connect, args=(listener, client), daemon=True).start()

    def _connect(self, listener: socket.socket, client: socket.socket) -> None:
        self._healed.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._discard(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._listener is not listener or client not in self._connections:
                self._discard(client, upstream)
                return
            self._connections.add(upstream)
        peer_gone = threading.Event()  # set once either side closed: the other side's next bytes get a reset
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink, peer_gone), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, peer_gone: threading.Event) -> None:
        try:
            while True:
                data = source.recv(65536)
                partitioned = self.blackholed
                self._healed.wait()  # what crosses a partition waits for it to heal
                if not data:
                    if partitioned:
                        # The FIN was lost in the partition: the sink is not told; it learns when it
                        # next sends (the other pipe then resets it).
                        peer_gone.set()
                        self._discard(source)
                        return
                    break
                if peer_gone.is_set():
                    self._reset(source)
                    return
                sink.sendall(data)
        except OSError:
            pass
        self._discard(source, sink)

    def _reset(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # no shutdown first: with a zero linger, close sends RST instead of FIN
        with self._lock:
            self._connections.discard(conn)

    def _discard(self, *conns: socket.socket) -> None:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with self._lock:
                self._connections.discard(conn)
