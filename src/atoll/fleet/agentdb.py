"""The agents' statements on PostgreSQL without blocking the event loop.

:mod:`atoll.fleet.agentpath` writes a request's logic as steps that yield
each statement; :class:`AsyncAgentDatabase` runs them on psycopg's
asynchronous connections (a small pool of its own, opened as needed), so the
process serves other requests while PostgreSQL answers, with neither a thread
per request nor the GIL handed back and forth.  Each statement is compiled
once, by SQLAlchemy for this dialect, and psycopg prepares it on each
connection after a few uses.  One statement is one transaction (autocommit),
as on the agents' blocking engine.

**Reports are committed together.**  A status report's ``UPDATE`` waits for
its commit to reach the disk; one at a time per connection, a busy disk
would cap the reports a process can take at its connections divided by that
wait.  So the writes of a batch step (:class:`atoll.fleet.agentpath.Query`
with ``batch``) go to one writer per process, which commits all the writes
that came while its previous commit was under way in one transaction
(pipelined, in the order of their device names so that two processes' batches
never deadlock), and gives each request its own row count.  The writes stay
single-row ``UPDATE``s whose ``WHERE`` repeats the request's checks, so a
replay in the same batch still changes nothing; a batch that fails answers
each of its requests as a database that is down does.

A connection that fails is closed, and so are the idle ones (the database
restarted, say); the request gets the answer of a database that is down
(503), and the next ones open new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import JSON
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from atoll.errors import FleetUnavailableError
from atoll.fleet import agentpath

#: Connections per process; requests beyond them wait for one.
POOL_SIZE = 16
#: The most writes committed in one transaction.
BATCH_MOST = 500

_DOWN = "the fleet database is unavailable; try again later"


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
        self._writes: list[tuple[str, _Compiled, dict[str, Any], asyncio.Future[int]]] = []
        self._writer: asyncio.Future[None] | None = None

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
        """Run *steps* (one request's): their result.  A connection is held
        while statements follow each other, not while a batched write waits."""
        connection: psycopg.AsyncConnection[Any] | None = None
        try:
            answer: Any = None
            while True:
                step = steps.send(answer)
                if isinstance(step, agentpath.Keys):
                    answer = await self._keys(step.stamp)
                    continue
                compiled = self._sql(step.statement)
                if step.batch is not None:
                    if connection is not None:
                        await self._give(connection)
                        connection = None
                    answer = await self._write(step.batch, compiled, step.params)
                    continue
                if connection is None:
                    connection = await self._connect()
                cursor = await connection.execute(compiled.sql, compiled.params(step.params))
                answer = cursor.rowcount if step.rowcount else await cursor.fetchone()
        except StopIteration as stop:
            return stop.value
        except psycopg.Error:
            if connection is not None:
                await connection.close()
                connection = None
                await self._give(None)
            await self._drop_idle()
            raise FleetUnavailableError(_DOWN) from None
        except asyncio.CancelledError:
            if connection is not None:
                # Cut short in a statement, perhaps: the connection is not used again.
                self._discard(connection)
                connection = None
                await self._give(None)
            raise
        finally:
            if connection is not None:
                await self._give(connection)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await self._take()
        except psycopg.Error:
            raise FleetUnavailableError(_DOWN) from None

    def _discard(self, connection: psycopg.AsyncConnection[Any]) -> None:
        closing = asyncio.ensure_future(connection.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _write(self, key: str, compiled: _Compiled, params: dict[str, Any]) -> int:
        written: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._writes.append((key, compiled, params, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._commit_writes())
        return await written

    async def _commit_writes(self) -> None:
        """Commit the waiting writes, a batch at a time, until none wait."""
        while self._writes:
            batch = sorted(self._writes[:BATCH_MOST], key=lambda write: write[0])
            del self._writes[:BATCH_MOST]
            try:
                connection = await self._take()
            except psycopg.Error:
                _fail(batch)
                continue
            try:
                # BEGIN, the writes and COMMIT in one round trip; one write alone
                # is its own transaction.
                async with connection.pipeline(), _together(connection, len(batch) > 1):
                    cursors = [
                        await connection.execute(compiled.sql, compiled.params(params))
                        for _, compiled, params, _ in batch
                    ]
            except psycopg.Error:
                await connection.close()
                await self._give(None)
                await self._drop_idle()
                _fail(batch)
                continue
            except BaseException:
                self._discard(connection)
                await self._give(None)
                for *_, written in batch:
                    written.cancel()
                raise
            await self._give(connection)
            for (*_, written), cursor in zip(batch, cursors, strict=True):
                if not written.done():
                    written.set_result(cursor.rowcount)

    async def _keys(self, stamp: int) -> Any:
        cached = self.key_cache.cached(stamp)
        if cached is not agentpath.STALE:
            return cached

        def load() -> Any:
            with self.engine.connect() as connection:
                return self.key_cache.get(connection, stamp)

        return await run_in_threadpool(load)

    async def _drop_idle(self) -> None:
        """After a failure: the idle connections are likely broken too (the
        database restarted, say), and are opened anew when needed."""
        assert self._freed is not None
        async with self._freed:
            dropped, self._idle = self._idle, []
            self._opened -= len(dropped)
            self._freed.notify(len(dropped))
        for connection in dropped:
            self._discard(connection)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


def _together(connection: psycopg.AsyncConnection[Any], many: bool) -> Any:
    return connection.transaction() if many else contextlib.nullcontext()


def _fail(batch: list[tuple[str, _Compiled, dict[str, Any], asyncio.Future[int]]]) -> None:
    for *_, written in batch:
        if not written.done():  # its request may have gone
            written.set_exception(FleetUnavailableError(_DOWN))
