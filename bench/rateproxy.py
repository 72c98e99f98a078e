"""A TCP proxy on loopback that holds both directions to a link's bit rate.

bench/transfer puts it between a device-side client (atoll's import from the
registry, ``ostree pull`` from its HTTP server) and the server, to time an
update as a device on a 1, 10 or 50 Mbit/s link would see it::

    client ──► 127.0.0.1:PORT ──[token bucket, down]──► upstream
           ◄──                ◄─[token bucket, up]───

Each direction has its own bucket (a full-duplex link), shared by every
connection through the proxy, so parallel connections split the rate between
them instead of each getting all of it.  A bucket holds :data:`BURST_SECONDS`
of the rate (at least one :data:`PIECE`): N bytes in one direction take at least
``(N - burst) * 8 / rate`` seconds.  Bytes are forwarded in pieces of at most
:data:`PIECE`, each paid for before it is sent.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from atoll.ratelimit import TokenBucket

#: Bytes forwarded per step (and the smallest bucket).
PIECE = 16 << 10
#: A bucket holds this many seconds of its rate.
BURST_SECONDS = 0.02


class RateProxy:
    """``with RateProxy(("127.0.0.1", port), 10e6) as proxy:`` then connect to
    ``proxy.host``.  *bits_per_second* applies to each direction."""

    def __init__(self, upstream: tuple[str, int], bits_per_second: float) -> None:
        self.upstream = upstream
        self.bits_per_second = bits_per_second
        burst = max(PIECE, bits_per_second / 8 * BURST_SECONDS)
        #: client -> upstream, and upstream -> client.
        self.up = TokenBucket(bits_per_second / 8, burst)
        self.down = TokenBucket(bits_per_second / 8, burst)
        self.burst = burst
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="rateproxy", daemon=True)

    def __enter__(self) -> RateProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            ends = threading.Barrier(2, action=lambda c=client, s=server: self._forget(c, s))
            for src, dst, bucket in ((client, server, self.up), (server, client, self.down)):
                threading.Thread(
                    target=self._pump,
                    args=(src, dst, bucket, ends),
                    name="rateproxy-pump",
                    daemon=True,
                ).start()

    def _forget(self, *sockets: socket.socket) -> None:
        """Both directions ended: close the connection's two sockets."""
        with self._lock:
            self._sockets = [s for s in self._sockets if s not in sockets]
        for sock in sockets:
            sock.close()

    def _pump(
        self, src: socket.socket, dst: socket.socket, bucket: TokenBucket, ends: threading.Barrier
    ) -> None:
        try:
            self._forward(src, dst, bucket)
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                ends.wait()

    def _forward(self, src: socket.socket, dst: socket.socket, bucket: TokenBucket) -> None:
        try:
            while piece := src.recv(PIECE):
                bucket.consume(len(piece))
                dst.sendall(piece)
                with self._lock:
                    if bucket is self.up:
                        self.bytes_up += len(piece)
                    else:
                        self.bytes_down += len(piece)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # One side went away: let the other see the connection end.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
