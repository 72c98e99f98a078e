"""The agents' two routes, answered in the ASGI layer before FastAPI.

``GET /api/v1/agent/spec`` and ``PUT /api/v1/agent/status`` are nearly all
of a fleet server's requests (every device makes each once a round).
:class:`AgentRoutes` answers them itself with raw ASGI messages: no routing,
no dependency injection, no ``Request`` object, no response model; the work
is :mod:`atoll.fleet.agentpath`'s.  The answers are the FastAPI routes'
(``create_app(agent_fast_path=False)`` serves those, and the tests hold the
two to the same status codes and bodies): the same signature, time and replay
checks, the same validation of a report (:class:`~atoll.fleet.models.DeviceStatus`),
the same error shape.  A request this layer does not expect (another method,
a query it would have to parse as pydantic does, a body on a poll) goes on to
FastAPI, which answers it as before.  :class:`~atoll.fleet.edge.Edge`, outside
this layer, still limits bodies and measures and logs every answer; the
route's template is put in the scope for it.

The statements run in the thread pool, on the agents' engine
(:func:`atoll.fleet.db.open_engine` with ``agents``).  Run instead on
asynchronous connections in the event loop, they took half the CPU per
request but answered far later whenever other work on the machine kept the
load above its cores: one thread gets one thread's share of the CPU, a pool
of threads more (``docs/performance.md``).  What is rare (a spec whose
version moved under a racing poll, a report that reconciles a rollout) runs
the general path in the thread pool.

**Long polls** (``wait``): a poll whose spec did not change waits on a
:class:`SpecNotifier`.  When a spec may have moved (at once after a change
made through this process, within :data:`NOTICE_EVERY` seconds after one
made through another process on the same database: one small ``SELECT`` per
process and period, :func:`atoll.fleet.agentpath.change_stamp`), it finds
which of the waiting polls' specs moved, for all of them at once
(:func:`atoll.fleet.agentpath.moved`), and wakes those; each then looks
again by itself.  A waiting poll costs nothing until then (a rollout's
progress wakes the polls of its released devices, not every device's); a
device that goes away ends its wait.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from atoll import errors
from atoll.agent import wire
from atoll.fleet import agentpath
from atoll.fleet.edge import database_answer, error_answer

log = logging.getLogger(__name__)

SPEC = "/api/v1/agent/spec"
STATUS = "/api/v1/agent/status"
#: How often each process looks for changes made through the other processes, in seconds.
NOTICE_EVERY = 1.0
#: The least time between two looks, in seconds: a rollout's reports move the stamp
#: many times a second, and each look reads every waiting device's row.
NOTICE_GAP = 0.25

#: A poll's own general path: (headers or None after the first look, device,
#: target, body, known version) -> the envelope, or None when unchanged.
GeneralPoll = Callable[[dict[str, str] | None, str, str, bytes, int], dict[str, Any] | None]
#: A report's general path: (headers, target, body) -> whether to ask for a key rotation.
GeneralReport = Callable[[dict[str, str], str, bytes], bool]

_NUMBER = re.compile(r"[0-9]{1,15}")
_SECONDS = re.compile(r"[0-9]{1,5}(\.[0-9]{1,6})?")
_JSON = [(b"content-type", b"application/json")]


class _Template:
    """What :class:`~atoll.fleet.edge.Edge` reads of a matched route."""

    def __init__(self, path: str) -> None:
        self.path = path


_ROUTES = {("GET", SPEC): _Template(SPEC), ("PUT", STATUS): _Template(STATUS)}


class SpecNotifier:
    """Wakes the waiting long polls of one process whose spec may have moved.

    :meth:`watch` is a future that completes when the device's spec may have
    moved from the version it holds; a poll takes it *before* it looks, so a
    change after its look always wakes it.  :meth:`run` (a task of the
    server's lifespan) reads the change stamp when :meth:`kick` says this
    process changed something, and every :data:`NOTICE_EVERY` seconds for the
    other processes; when the stamp moved, it asks which of the waiting
    polls' specs moved (the stamp is read first, so a change committed while
    it asks moves the next reading)."""

    def __init__(
        self, engine: Engine, key_cache: agentpath.KeyCache, every: float = NOTICE_EVERY
    ) -> None:
        self.engine = engine
        self.key_cache = key_cache
        self.every = every
        self._waiting: dict[asyncio.Future[None], tuple[str, int]] = {}
        self._kicked: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set when the server stops: waiting polls end unchanged, new ones do not wait.
        self.closing = False

    def close(self) -> None:
        """The server stops (from any thread, a signal handler's included): every
        waiting poll is answered unchanged now, so that its device asks again
        (another process, behind the load balancer) instead of the shutdown
        waiting out its wait."""
        self.closing = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for future in self._waiting:
            if not future.done():
                future.set_result(None)
        self._waiting.clear()

    def watch(self, name: str, known: int) -> asyncio.Future[None]:
        """A future completed when *name*'s spec may have moved from *known*
        (:meth:`forget` it when the poll ends)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[future] = (name, known)
        return future

    def forget(self, future: asyncio.Future[None]) -> None:
        self._waiting.pop(future, None)

    def kick(self) -> None:
        if self._kicked is not None:
            self._kicked.set()

    async def _wake(self) -> None:
        waiting = dict(self._waiting)
        if not waiting:
            return
        moved = await run_in_threadpool(
            agentpath.moved, self.engine, self.key_cache, set(waiting.values())
        )
        for future, poll in waiting.items():
            if poll in moved and not future.done():
                future.set_result(None)
                self.forget(future)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._kicked = asyncio.Event()
        stamp: tuple[Any, ...] | None = None
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._kicked.wait(), self.every)
            await asyncio.sleep(min(NOTICE_GAP, self.every))  # kicks meanwhile: one look
            self._kicked.clear()
            try:
                now = await run_in_threadpool(agentpath.change_stamp, self.engine)
                if now != stamp:
                    # The first reading looks too: a change may have come before it.
                    await self._wake()
                    stamp = now
            except DBAPIError as exc:  # the next reading asks again
                log.warning("looking for spec changes: %s", exc)


@dataclass(frozen=True)
class AgentPaths:
    """What :class:`AgentRoutes` answers with."""

    engine: Engine
    key_cache: agentpath.KeyCache
    lifetime: datetime.timedelta
    notifier: SpecNotifier
    general_poll: GeneralPoll
    general_report: GeneralReport
    #: A report's body validated: its status as stored.
    status_of: Callable[[bytes], dict[str, Any]]
    max_wait: float


class AgentRoutes:
    """ASGI middleware: the agents' spec poll and status report (module docstring)."""

    def __init__(self, app: Any, paths: AgentPaths) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        template = None
        if scope["type"] == "http" and not scope.get("root_path"):
            template = _ROUTES.get((scope["method"], scope["path"]))
        if template is None:
            await self.app(scope, receive, send)
            if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
                self.paths.notifier.kick()  # it may have changed what devices run
            return
        query = _query(scope, self.paths.max_wait) if template.path == SPEC else (0, 0.0)
        if query is None:
            await self.app(scope, receive, send)  # FastAPI says what is wrong with it
            return
        body = await _body(receive)
        if body is None:
            return  # the device went away
        if template.path == SPEC and body:
            await self.app(scope, _replay(body, receive), send)  # a poll with a body: FastAPI
            return
        scope["route"] = template
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        target = template.path + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        try:
            if template.path == SPEC:
                await self._spec(headers, target, *query, receive, send)
            else:
                await self._status(headers, target, body, send)
        except errors.AtollError as exc:
            await error_answer(exc)(scope, receive, send)
        except DBAPIError as exc:
            await database_answer(exc)(scope, receive, send)

    async def _run(self, steps: agentpath.Steps) -> Any:
        paths = self.paths
        return await run_in_threadpool(agentpath.run, paths.engine, paths.key_cache, steps)

    async def _spec(
        self,
        headers: dict[str, str],
        target: str,
        known: int,
        wait: float,
        receive: Any,
        send: Any,
    ) -> None:
        name = headers.get(wire.HEADER_DEVICE.lower(), "")
        notifier = self.paths.notifier
        changed = notifier.watch(name, known) if wait and not notifier.closing else None
        try:
            quick = await self._run(
                agentpath.poll_steps(headers, target, known, self.paths.lifetime)
            )
            envelope = await self._settle(quick, headers, name, target, known)
            if envelope is None and changed is not None:
                envelope = await self._wait(changed, name, target, known, wait, receive)
        finally:
            if changed is not None:
                notifier.forget(changed)
        if envelope is None:
            await _answer(send, 204)
        else:
            await _answer(send, 200, json.dumps(envelope).encode(), _JSON)

    async def _settle(
        self,
        quick: agentpath.Unchanged | agentpath.Changed | dict[str, Any],
        headers: dict[str, str] | None,
        name: str,
        target: str,
        known: int,
    ) -> dict[str, Any] | None:
        if isinstance(quick, agentpath.Unchanged):
            return None
        if isinstance(quick, agentpath.Changed):
            return await run_in_threadpool(
                self.paths.general_poll, headers, name, target, b"", known
            )
        return quick

    async def _wait(
        self,
        changed: asyncio.Future[None],
        name: str,
        target: str,
        known: int,
        wait: float,
        receive: Callable[[], Awaitable[Any]],
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        notifier = self.paths.notifier
        deadline = loop.time() + wait
        gone = asyncio.ensure_future(receive())  # only a disconnect comes now
        try:
            while (remaining := deadline - loop.time()) > 0:
                done, _ = await asyncio.wait(
                    (changed, gone), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done or changed not in done or notifier.closing:
                    return None  # the device went away, the wait is over, or the server stops
                changed = notifier.watch(name, known)
                quick = await self._run(agentpath.recheck_steps(name, known, self.paths.lifetime))
                envelope = await self._settle(quick, None, name, target, known)
                if envelope is not None:
                    return envelope
            return None
        finally:
            gone.cancel()
            notifier.forget(changed)

    async def _status(self, headers: dict[str, str], target: str, body: bytes, send: Any) -> None:
        rotate = await self._run(
            agentpath.report_steps(headers, target, body, self.paths.status_of)
        )
        if rotate is None:
            # A device of a rollout in flight: its rollout is reconciled with the report.
            rotate = await run_in_threadpool(self.paths.general_report, headers, target, body)
            self.paths.notifier.kick()
        extra = [(wire.HEADER_ROTATION.lower().encode(), b"requested")] if rotate else []
        await _answer(send, 204, b"", extra)


def _query(scope: Any, max_wait: float) -> tuple[int, float] | None:
    """``knownVersion`` and ``wait`` of a spec poll, or None for anything but
    plain numbers in range (FastAPI answers those, with its own words)."""
    try:
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return None
    given = dict(pairs)
    known, wait = given.get("knownVersion", "0"), given.get("wait", "0")
    if not _NUMBER.fullmatch(known) or not _SECONDS.fullmatch(wait):
        return None
    seconds = float(wait)
    if seconds > max_wait:
        return None
    return int(known), seconds


async def _body(receive: Callable[[], Awaitable[Any]]) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """A receive that gives *body* (read already) first, then *receive*'s messages."""
    given = False

    async def replaying() -> Any:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying


async def _answer(
    send: Any, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    fields = list(headers or [])
    if status != 204:
        fields.insert(0, (b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})
