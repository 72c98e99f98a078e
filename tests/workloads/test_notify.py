"""The supervisor's notify socket: sd_notify messages in, and a wake-up from
another thread that ends a wait at once (a stop must not wait for the next tick)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from atoll.workloads.supervise.notify import NotifySocket

LONG = 30.0  # a wait that wake() must cut short


def test_messages_are_read_as_they_come(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"READY=1\nMAINPID=42", str(notify.path))
            client.sendto(b"STATUS=serving", str(notify.path))
        messages = notify.receive(LONG)
        assert messages[0]["READY"] == "1" and messages[0]["MAINPID"] == "42"
        assert messages[1]["STATUS"] == "serving"
        assert notify.receive(0.0) == []
    finally:
        notify.close()
    assert not notify.path.exists()


def test_wake_ends_a_wait_and_is_not_lost_before_one(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        waker = threading.Timer(0.05, notify.wake)
        waker.start()
        started = time.monotonic()
        assert notify.receive(LONG) == []
        assert time.monotonic() - started < LONG / 2
        waker.join()
        notify.wake()  # before the wait: the wait still ends at once
        notify.wake()
        started = time.monotonic()
        assert notify.receive(LONG) == []
        assert time.monotonic() - started < LONG / 2
        # Consumed: the next wait waits again (for its timeout only).
        assert notify.receive(0.05) == []
    finally:
        notify.close()
    notify.wake()  # after close: nothing happens
