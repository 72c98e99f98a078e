"""bench/rateproxy.py holds both directions to its rate and passes bytes intact.

The time checks are lower bounds the proxy guarantees (N bytes at R bit/s take
at least (N - burst) * 8 / R seconds), not performance figures: a slow machine
only makes them easier to meet."""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from rateproxy import RateProxy

RATE = 4e6  # bit/s: 500 KB/s
SIZE = 200_000


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A server that answers each connection with the sha256 of what it got,
    then SIZE bytes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            digest = hashlib.sha256()
            while data := conn.recv(1 << 16):
                digest.update(data)
            conn.sendall(digest.digest() + bytes(range(256)) * (SIZE // 256))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[:2]
    listener.close()


def _exchange(host: str, payload: bytes) -> bytes:
    addr, port = host.split(":")
    with socket.create_connection((addr, int(port))) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while data := sock.recv(1 << 16):
            out += data
    return bytes(out)


def test_both_directions_are_held_to_the_rate(echo: tuple[str, int]) -> None:
    payload = b"u" * SIZE
    with RateProxy(echo, RATE) as proxy:
        started = time.monotonic()
        answer = _exchange(proxy.host, payload)
        elapsed = time.monotonic() - started
        burst = proxy.burst
    assert answer[:32] == hashlib.sha256(payload).digest()
    assert answer[32:] == bytes(range(256)) * (SIZE // 256)
    assert proxy.bytes_up == SIZE and proxy.bytes_down == len(answer)
    # Up then down, one after the other (the server answers after the upload
    # ended): each direction takes its own time.
    floor = 2 * (SIZE - burst) * 8 / RATE
    assert elapsed >= floor, f"{2 * SIZE} bytes in {elapsed:.3f} s, below {floor:.3f} s"


def test_connections_share_the_rate(echo: tuple[str, int]) -> None:
    """Parallel connections split the link between them."""
    with RateProxy(echo, RATE) as proxy:
        started = time.monotonic()
        threads = [threading.Thread(target=_exchange, args=(proxy.host, b"")) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        burst = proxy.burst
    assert proxy.bytes_down == 3 * (32 + SIZE // 256 * 256)
    floor = (proxy.bytes_down - burst) * 8 / RATE
    assert elapsed >= floor, f"{proxy.bytes_down} bytes in {elapsed:.3f} s, below {floor:.3f} s"
