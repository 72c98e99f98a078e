"""The sd_notify protocol, server side: one unix datagram socket per unit.

The supervisor binds ``STATE_DIR/notify/NAME.sock`` (or a short path under
/tmp when that is longer than a socket address allows) and gives its path to
``podman run`` as ``NOTIFY_SOCKET``.  podman then sends, with
``--sdnotify=conmon``, ``MAINPID=<conmon pid>`` and ``READY=1`` once the
container runs; with ``--sdnotify=container`` it sends ``MAINPID`` and passes the
socket into the container, whose process sends ``READY=1`` itself.

A datagram is newline-separated ``KEY=VALUE`` assignments (sd_notify(3));
the keys used are READY, STOPPING, MAINPID, STATUS, ERRNO and WATCHDOG.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from atoll.workloads.supervise.controlserver import MAX_SOCKET_PATH


def parse_message(data: bytes) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, eq, value = line.partition("=")
        if eq and key:
            values[key.strip()] = value
    return values


@dataclass
class NotifyState:
    """What a unit has said so far in its current run."""

    ready: bool = False
    stopping: bool = False
    main_pid: int | None = None
    status: str = ""
    errno: int | None = None
    watchdog_pings: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def apply(self, values: dict[str, str]) -> None:
        if values.get("READY") == "1":
            self.ready = True
        if values.get("STOPPING") == "1":
            self.stopping = True
        if values.get("WATCHDOG") == "1":
            self.watchdog_pings += 1
        pid = values.get("MAINPID", "")
        if pid.isdigit():
            self.main_pid = int(pid)
        if "STATUS" in values:
            self.status = values["STATUS"]
        errno = values.get("ERRNO", "")
        if errno.isdigit():
            self.errno = int(errno)
        self.extra.update(values)


class NotifySocket:
    """A bound datagram socket; :meth:`receive` reads what has arrived."""

    def __init__(self, preferred: Path) -> None:
        self._tmpdir: str | None = None
        path = preferred
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            self._tmpdir = tempfile.mkdtemp(prefix="atoll-notify-")
            path = Path(self._tmpdir) / "notify.sock"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # The container may run as another user; it must be able to send.
        path.chmod(0o777)
        self.sock.setblocking(False)
        # wake() ends a receive() that is waiting, from another thread.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self.sock.fileno()

    def wake(self) -> None:
        """Make a waiting (or the next) :meth:`receive` return at once."""
        if self._wake_w < 0:
            return  # closed
        with contextlib.suppress(BlockingIOError):  # already woken: the pipe is full
            os.write(self._wake_w, b"!")

    def receive(self, timeout: float = 0.0) -> list[dict[str, str]]:
        """Messages that arrive within *timeout* seconds (all that are queued), or
        sooner when :meth:`wake` is called."""
        messages: list[dict[str, str]] = []
        sock = self.sock.fileno()
        readable, _, _ = select.select([sock, self._wake_r], [], [], max(timeout, 0.0))
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if sock not in readable:
            return messages
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return messages
            messages.append(parse_message(data))

    def drain(self) -> None:
        self.receive(0.0)

    def close(self) -> None:
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1
        self.path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            Path(self._tmpdir).rmdir()
