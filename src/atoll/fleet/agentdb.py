"""The agents' statements on PostgreSQL without blocking the event loop.

:mod:`atoll.fleet.agentpath` writes a request's logic as steps that yield
each statement; :class:`AsyncAgentDatabase` runs them on psycopg's
asynchronous connections (a small pool of its own, opened as needed), so the
process serves other requests while PostgreSQL answers, with neither a thread
per request nor the GIL handed back and forth.  Each statement is compiled
once, by SQLAlchemy for this dialect, and psycopg prepares it on each
connection after a few uses.  One statement is one transaction (autocommit),
as on the agents' blocking engine.

A connection that fails is closed and not given back; the request gets the
answer of a database that is down (503), and the next one opens a new
connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import JSON
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from atoll.errors import FleetUnavailableError
from atoll.fleet import agentpath

#: Connections per process (a report waits for its commit to reach the disk: as
#: many as the blocking pools had), requests beyond them wait for one.
POOL_SIZE = 24


class _Compiled:
    def __init__(self, statement: Any, engine: Engine) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql: str = compiled.string
        self.defaults = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in compiled.construct_params(_check=False).items()
        }
        self.json = {name for name, bind in compiled.binds.items() if isinstance(bind.type, JSON)}

    def params(self, given: dict[str, Any]) -> dict[str, Any]:
        params = {**self.defaults, **given}
        for name in self.json.intersection(given):
            params[name] = Json(params[name])
        return params


class AsyncAgentDatabase:
    def __init__(self, engine: Engine, key_cache: agentpath.KeyCache, size: int = POOL_SIZE):
        self.engine = engine
        self.key_cache = key_cache
        self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._opened = 0
        self._freed: asyncio.Condition | None = None
        self._compiled: dict[int, _Compiled] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _sql(self, statement: Any) -> _Compiled:
        found = self._compiled.get(id(statement))
        if found is None:
            found = self._compiled[id(statement)] = _Compiled(statement, self.engine)
        return found

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            while not self._idle and self._opened >= self.size:
                await self._freed.wait()
            if self._idle:
                return self._idle.pop()
            self._opened += 1
        try:
            return await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except BaseException:
            await self._give(None)
            raise

    async def _give(self, connection: psycopg.AsyncConnection[Any] | None) -> None:
        assert self._freed is not None
        async with self._freed:
            if connection is None:
                self._opened -= 1
            else:
                self._idle.append(connection)
            self._freed.notify()

    async def run(self, steps: agentpath.Steps) -> Any:
        """Run *steps* (one request's) on one connection: their result."""
        try:
            connection = await self._take()
        except psycopg.Error:
            raise FleetUnavailableError(
                "the fleet database is unavailable; try again later"
            ) from None
        kept: psycopg.AsyncConnection[Any] | None = connection
        try:
            answer: Any = None
            while True:
                step = steps.send(answer)
                if isinstance(step, agentpath.Keys):
                    answer = await self._keys(step.stamp)
                    continue
                compiled = self._sql(step.statement)
                cursor = await connection.execute(compiled.sql, compiled.params(step.params))
                answer = cursor.rowcount if step.rowcount else await cursor.fetchone()
        except StopIteration as stop:
            return stop.value
        except psycopg.Error:
            kept = None
            await connection.close()
            raise FleetUnavailableError(
                "the fleet database is unavailable; try again later"
            ) from None
        except asyncio.CancelledError:
            # Cut short in a statement, perhaps: the connection is not used again.
            kept = None
            closing = asyncio.ensure_future(connection.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            raise
        finally:
            await self._give(kept)

    async def _keys(self, stamp: int) -> Any:
        cached = self.key_cache.cached(stamp)
        if cached is not agentpath.STALE:
            return cached

        def load() -> Any:
            with self.engine.connect() as connection:
                return self.key_cache.get(connection, stamp)

        return await run_in_threadpool(load)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()
