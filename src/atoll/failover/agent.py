"""The failover agent: adverts over UDP, the election, and the service address.

One agent runs per device. It receives adverts on its ``listen`` address, sends
its own to every peer, and feeds both to :class:`atoll.failover.election.Election`.
While it is master it owns the service address: it binds and listens on it and
forwards every connection to the device's backend (the workload's own address,
e.g. a socket-activated unit of ``atoll workload run``). Only one process can
listen on one TCP address of one network namespace, so two masters at once
cannot both serve: the second one's bind fails, it retries at each advert, and
the election makes one of them step down.

The status file (JSON, version 1) is rewritten atomically whenever the role,
the master or the address changes, and at most once a second otherwise::

    {"version": 1, "name": "dev1", "pid": 4242, "group": 1, "role": "master",
     "reason": "no advert from a master for 3.41 s", "since": "2026-…Z",
     "master": "dev1", "priority": 150, "preempt": false, "interval": 1.0,
     "masterDownInterval": 3.41, "listen": "127.0.0.1:7101",
     "peers": ["127.0.0.1:7102"], "address": "127.0.0.1:8080",
     "backend": "127.0.0.1:18081", "addressHeld": true, "addressError": null,
     "counters": {"advertsSent": 12, "advertsReceived": 30, "advertsDropped": 0,
                  "connections": 3, "backendErrors": 0},
     "history": [{"at": "…", "role": "backup", "reason": "…"}, …]}
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import CommandError, FailoverNotRunningError, FailoverSocketError
from atoll.failover.config import Endpoint, FailoverConfig
from atoll.failover.election import Action, Election, ElectionSettings, Role
from atoll.failover.protocol import PRIORITY_RESIGN, Advert, AdvertError, decode
from atoll.fsutil import write_atomic
from atoll.run import run
from atoll.timeutil import utc_timestamp

log = logging.getLogger(__name__)

STATUS_VERSION = 1
_STATUS_EVERY = 1.0
_HISTORY = 20
_CONNECT_TIMEOUT = 5.0
_CHUNK = 65536


@dataclass
class Counters:
    adverts_sent: int = 0
    adverts_received: int = 0
    adverts_dropped: int = 0
    connections: int = 0
    backend_errors: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "advertsSent": self.adverts_sent,
            "advertsReceived": self.adverts_received,
            "advertsDropped": self.adverts_dropped,
            "connections": self.connections,
            "backendErrors": self.backend_errors,
        }


class ServiceAddress:
    """The service address while we are master: a listening socket and a TCP forwarder."""

    def __init__(self, address: Endpoint, backend: Endpoint, counters: Counters) -> None:
        self.address = address
        self.backend = backend
        self.counters = counters
        self.error: str | None = None
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> bool:
        return self._server is not None

    async def take(self) -> bool:
        if self._server is not None:
            return True
        sock = socket.socket(self.address.family, socket.SOCK_STREAM)
        try:
            # TIME_WAIT connections of the previous master must not keep us from listening;
            # a listening socket of another process still does (no SO_REUSEPORT).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.address.sockaddr)
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._accept, sock=sock)
        except OSError as exc:
            sock.close()
            self.error = f"cannot listen on {self.address}: {os.strerror(exc.errno or 0)}"
            if exc.errno != errno.EADDRINUSE:
                log.warning("%s", self.error)
            return False
        self.error = None
        return True

    async def release(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Connections in flight end too: the address is someone else's now.
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self.counters.connections += 1
        try:
            await self._forward(reader, writer)
        finally:
            self._links.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.backend.sockaddr), _CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self.counters.backend_errors += 1
            log.info("backend %s: %s", self.backend, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, agent: FailoverAgent) -> None:
        self.agent = agent

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.agent.datagram(data)

    def error_received(self, exc: Exception) -> None:
        # A peer that is down answers with ICMP port unreachable: expected, not an error.
        log.debug("advert socket: %s", exc)


class FailoverAgent:
    def __init__(
        self,
        config: FailoverConfig,
        *,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self.election = Election(
            ElectionSettings(
                name=config.name,
                group=config.group,
                priority=config.priority,
                interval=config.interval,
                address=str(config.address),
                preempt=config.preempt,
            )
        )
        self.counters = Counters()
        self.service = ServiceAddress(config.address, config.backend, self.counters)
        self.history: deque[dict[str, str]] = deque(maxlen=_HISTORY)
        self.since = utc_timestamp()
        self._wake = asyncio.Event()
        self._stopping = False
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: list[Action] = []
        self._notifications: set[asyncio.Task[None]] = set()
        self._seen: tuple[Role, str, str | None, bool] = (Role.INIT, "", None, False)
        self._written = float("-inf")
        self._dirty = True

    # --- the outside ------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Serve until :meth:`request_stop`; then give the address up."""
        loop = asyncio.get_running_loop()
        sock = self._advert_socket()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=sock)
        self._transport = transport
        try:
            await self._apply(self.election.start(self.clock()))
            while not self._stopping:
                delay = self.election.deadline - self.clock()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(delay, _STATUS_EVERY))
                self._wake.clear()
                actions, self._pending = self._pending, []
                actions += self.election.tick(self.clock())
                if self.election.role is Role.MASTER and not self.service.held and actions:
                    actions.append(Action.TAKE)  # retry: the address was busy
                await self._apply(actions)
            await self._apply(self.election.stop(self.clock()))
        finally:
            await self.service.release()
            transport.close()
            self._write_status(force=True)
            if self._notifications:
                await asyncio.wait(self._notifications, timeout=5)

    def status(self) -> dict[str, Any]:
        e = self.election
        c = self.config
        return {
            "version": STATUS_VERSION,
            "name": c.name,
            "pid": os.getpid(),
            "group": c.group,
            "role": e.role.value,
            "reason": e.reason,
            "since": self.since,
            "master": e.master,
            "priority": c.priority,
            "preempt": c.preempt,
            "interval": c.interval,
            "masterDownInterval": round(e.down_interval, 3),
            "listen": str(c.listen),
            "peers": [str(p) for p in c.peers],
            "address": str(c.address),
            "backend": str(c.backend),
            "addressHeld": self.service.held,
            "addressError": self.service.error,
            "counters": self.counters.to_json(),
            "history": list(self.history),
        }

    # --- adverts ----------------------------------------------------------------------

    def _advert_socket(self) -> socket.socket:
        listen = self.config.listen
        sock = socket.socket(listen.family, socket.SOCK_DGRAM)
        try:
            sock.bind(listen.sockaddr)
        except OSError as exc:
            sock.close()
            raise FailoverSocketError(
                f"cannot receive adverts on {listen}: {os.strerror(exc.errno or 0)}",
                hint="another agent uses that address, or it is not an address of this machine",
            ) from None
        sock.setblocking(False)
        return sock

    def datagram(self, data: bytes) -> None:
        try:
            advert = decode(data, key=self.config.key)
        except AdvertError as exc:
            self.counters.adverts_dropped += 1
            log.debug("dropped a datagram: %s", exc)
            return
        if advert.group != self.config.group:
            self.counters.adverts_dropped += 1
            return
        self.counters.adverts_received += 1
        ignored = self.election.ignored
        self._pending += self.election.receive(advert, self.clock())
        if self.election.ignored != ignored:
            self.counters.adverts_dropped += 1
        self._wake.set()

    def _send(self, priority: int) -> None:
        if self._transport is None:
            return
        advert = Advert(
            self.config.group,
            priority,
            self.election.settings.interval_cs,
            self.config.name,
            str(self.config.address),
        )
        data = advert.encode(self.config.key)
        for peer in self.config.peers:
            try:
                self._transport.sendto(data, peer.sockaddr)
            except OSError as exc:
                log.debug("advert to %s: %s", peer, exc)
        self.counters.adverts_sent += 1

    # --- actions ----------------------------------------------------------------------

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if action is Action.SEND:
                self._send(self.config.priority)
            elif action is Action.SEND_RESIGN:
                self._send(PRIORITY_RESIGN)
            elif action is Action.TAKE:
                await self.service.take()
            elif action is Action.RELEASE:
                await self.service.release()
        self._note_change()
        self._write_status()

    def _note_change(self) -> None:
        e = self.election
        seen = (e.role, e.reason, e.master, self.service.held)
        if seen == self._seen:
            return
        role_changed = seen[0] != self._seen[0]
        self._seen = seen
        if role_changed:
            self.since = utc_timestamp()
            self.history.append({"at": self.since, "role": e.role.value, "reason": e.reason})
            log.info("%s: %s (%s)", self.config.name, e.role.value, e.reason)
            self._notify(e.role)
        self._dirty = True
        if self.on_change is not None:
            self.on_change(self.status())

    def _notify(self, role: Role) -> None:
        if not self.config.notify or role is Role.INIT:
            return

        async def notify() -> None:
            argv = [*self.config.notify, role.value]
            try:
                # In a thread: the election goes on while the command runs.
                proc = await asyncio.to_thread(run, argv, check=False, capture=False)
                if proc.returncode != 0:
                    log.warning("notify command %s %s exited %d", argv[0], role, proc.returncode)
            except (OSError, CommandError) as exc:
                log.warning("notify command %s: %s", argv[0], exc)

        task = asyncio.get_running_loop().create_task(notify())
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    def _write_status(self, *, force: bool = False) -> None:
        now = self.clock()
        if not (force or self._dirty) and now - self._written < _STATUS_EVERY:
            return
        self._written, self._dirty = now, False
        path = self.config.status_path
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(self.status(), indent=2) + "\n").encode(), durable=False)


def read_status(path: os.PathLike[str] | str) -> dict[str, Any]:
    """The status file an agent wrote, with ``running``: whether its process is alive."""
    try:
        doc: dict[str, Any] = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FailoverNotRunningError(
            f"{path}: no failover status here",
            hint="start the agent with atoll failover run, or give its --status-file",
        ) from None
    except (OSError, ValueError) as exc:
        raise FailoverNotRunningError(f"{path}: cannot read the status: {exc}") from None
    pid = doc.get("pid")
    doc["running"] = isinstance(pid, int) and doc.get("role") != Role.STOPPED.value and _alive(pid)
    return doc


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A killed agent whose parent has not reaped it yet is a zombie: not running.
    return stat.rpartition(")")[2].split()[0] != "Z"
