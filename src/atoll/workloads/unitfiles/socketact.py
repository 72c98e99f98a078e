"""Socket activation: listen for a workload, start it on the first connection,
pass the bytes through, stop it again when it has been idle.

A ``NAME.socket`` unit beside ``NAME.container`` (in the same directories,
systemd's model) describes the listener::

    [Socket]
    ListenStream=127.0.0.1:8080   TCP address to listen on (PORT alone: all addresses)
    Service=web.service           unit to start (default: NAME.service)
    ProxyTo=127.0.0.1:18080       atoll: where to pass the bytes (default: the
                                  host side of the container's first PublishPort)
    IdleTimeoutSec=30s            atoll: stop the unit after this long without
                                  connections (default 0: keep it running)
    ConnectTimeoutSec=10s         atoll: how long to retry connecting to the
                                  started workload before closing the client

The listener accepts at once; the first connection waits while the unit
starts (``TimeoutStartSec`` applies) and is then joined to a connection to
``ProxyTo``, retried until the workload listens.  A unit that fails to start
closes the waiting connections.  The workload runs as it would without the
socket: it listens on its own published port, as behind systemd-socket-proxyd.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import QuadletUnitError
from atoll.workloads.unitfiles.quadlet import ContainerOptions, ParseWarning, read_sections
from atoll.workloads.unitfiles.restart import unit_timespan

log = logging.getLogger(__name__)

SOCKET_KEYS = ("ListenStream", "Service", "ProxyTo", "IdleTimeoutSec", "ConnectTimeoutSec")


@dataclass(frozen=True)
class SocketUnit:
    name: str  # web.socket
    path: Path
    listen: tuple[str, int]
    service: str  # web.service
    proxy_to: tuple[str, int] | None = None
    idle_timeout: float = 0.0
    connect_timeout: float = 10.0

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


def parse_address(text: str, *, what: str, default_host: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` as (host, port)."""
    value = text.strip()
    host = default_host
    port_text = value
    if value.startswith("["):
        inner, _, rest = value[1:].partition("]")
        host, port_text = inner, rest.lstrip(":")
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or value.startswith("/"):
        raise QuadletUnitError(
            f"{what}={text} is not a TCP address",
            hint="write PORT or HOST:PORT, e.g. 127.0.0.1:8080",
        )
    return host or default_host, int(port_text)


def parse_socket_unit(path: Path) -> tuple[SocketUnit, list[ParseWarning]]:
    warnings: list[ParseWarning] = []
    values: dict[str, str] = {}
    for section, entry in read_sections(path, warnings):
        if section in ("Unit", "Install"):
            continue
        if section != "Socket":
            warnings.append(ParseWarning(path, entry.line, f"section [{section}] is not used"))
            continue
        if entry.key not in SOCKET_KEYS:
            warnings.append(ParseWarning(path, entry.line, f"{entry.key} is not supported"))
            continue
        values[entry.key] = entry.value
    if not values.get("ListenStream"):
        raise QuadletUnitError(
            f"{path}: [Socket] has no ListenStream=", hint="add ListenStream=PORT"
        )
    stem = path.name.rsplit(".", 1)[0]
    proxy = values.get("ProxyTo")
    return (
        SocketUnit(
            name=path.name,
            path=path,
            listen=parse_address(
                values["ListenStream"], what=f"{path}: ListenStream", default_host="0.0.0.0"
            ),
            service=values.get("Service") or f"{stem}.service",
            proxy_to=parse_address(proxy, what=f"{path}: ProxyTo", default_host="127.0.0.1")
            if proxy
            else None,
            idle_timeout=unit_timespan(
                values.get("IdleTimeoutSec", "0"), what=f"{path}: IdleTimeoutSec"
            ),
            connect_timeout=unit_timespan(
                values.get("ConnectTimeoutSec", "10s"), what=f"{path}: ConnectTimeoutSec"
            ),
        ),
        warnings,
    )


def load_sockets(roots: Sequence[Path]) -> tuple[list[SocketUnit], list[ParseWarning]]:
    """Every ``*.socket`` under *roots*; for the same name the first directory wins."""
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir():
            for path in sorted(root.glob("*.socket")):
                if path.is_file():
                    found.setdefault(path.name, path)
    units: list[SocketUnit] = []
    warnings: list[ParseWarning] = []
    for name in sorted(found):
        unit, unit_warnings = parse_socket_unit(found[name])
        units.append(unit)
        warnings.extend(unit_warnings)
    return units, warnings


def published_target(options: ContainerOptions) -> tuple[str, int] | None:
    """The host address of the container's first TCP PublishPort, if it has one."""
    for publish in options.publish_port:
        spec, _, proto = publish.partition("/")
        if proto and proto != "tcp":
            continue
        parts = spec.rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            host = parts[0].strip("[]") or "127.0.0.1"
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1"
            return host, int(parts[1])
        if len(parts) == 2 and parts[0].isdigit():
            return "127.0.0.1", int(parts[0])
    return None


class SocketActivator:
    """Listens for one socket unit and joins each client to the started workload."""

    def __init__(
        self,
        unit: SocketUnit,
        target: tuple[str, int],
        *,
        start: Callable[[], object],
        stop: Callable[[], object],
        is_active: Callable[[], bool],
    ) -> None:
        self.unit = unit
        self.target = target
        self._start = start
        self._stop = stop
        self._is_active = is_active
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.connections = 0
        self.accepted = 0
        self.last_activity = time.monotonic()
        self.listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        host, port = self.unit.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise QuadletUnitError(
                f"{self.unit.path}: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        sock.listen(64)
        self.listener = sock
        self._thread = threading.Thread(target=self._serve, name=self.unit.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.listener is not None:
            self.listener.close()

    def _serve(self) -> None:
        assert self.listener is not None
        while not self._closing.is_set():
            readable, _, _ = select.select([self.listener], [], [], 0.2)
            if readable:
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    continue
                with self._lock:
                    self.connections += 1
                    self.accepted += 1
                    self.last_activity = time.monotonic()
                threading.Thread(
                    target=self._handle, args=(client,), name=f"{self.unit.name}-conn", daemon=True
                ).start()
            self._stop_when_idle()

    def _stop_when_idle(self) -> None:
        if self.unit.idle_timeout <= 0:
            return
        with self._lock:
            idle = self.connections == 0 and (
                time.monotonic() - self.last_activity >= self.unit.idle_timeout
            )
        if idle and self._is_active():
            log.info(
                "%s: idle for %s s, stopping %s",
                self.unit.name,
                self.unit.idle_timeout,
                self.unit.service,
            )
            try:
                self._stop()
            except Exception as exc:  # the listener must survive a failed stop
                log.warning("%s: stopping %s failed: %s", self.unit.name, self.unit.service, exc)
            with self._lock:
                self.last_activity = time.monotonic()

    def _connect_upstream(self) -> socket.socket | None:
        deadline = time.monotonic() + self.unit.connect_timeout
        while not self._closing.is_set():
            try:
                return socket.create_connection(self.target, timeout=5.0)
            except OSError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)
        return None

    def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            try:
                self._start()
            except Exception as exc:
                log.warning("%s: %s did not start: %s", self.unit.name, self.unit.service, exc)
                return
            upstream = self._connect_upstream()
            if upstream is None:
                log.warning("%s: nothing listens on %s:%s", self.unit.name, *self.target)
                return
            self._pump(client, upstream)
        finally:
            client.close()
            if upstream is not None:
                upstream.close()
            with self._lock:
                self.connections -= 1
                self.last_activity = time.monotonic()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        open_ = {a, b}
        a.settimeout(None)
        b.settimeout(None)
        while open_ and not self._closing.is_set():
            readable, _, _ = select.select(list(open_), [], [], 0.5)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        peers[sock].sendall(data)
                    except OSError:
                        return
                    with self._lock:
                        self.last_activity = time.monotonic()
                else:
                    open_.discard(sock)
                    with contextlib.suppress(OSError):
                        peers[sock].shutdown(socket.SHUT_WR)
