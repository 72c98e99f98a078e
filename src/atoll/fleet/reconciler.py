"""The rollout reconciler each API process runs.

A rollout moves when its devices report (a batch's outcome, the next batch
released) and when time passes (an open window, a device's timeout).  A
report of a device whose rollout is in flight reconciles that rollout in its
own transaction when no other transaction holds the rollout's row; when one
does (a thousand devices of a batch reporting at once), the report is
recorded without waiting for the row and asks this process's reconciler to
run soon (:meth:`Reconciler.soon`): one reconciliation then takes in every
report committed before it began, instead of each report waiting its turn
behind the others for the same work.  Between reports the reconciler runs
every *every* seconds, skipping a rollout another process is reconciling
(``SKIP LOCKED``, :func:`atoll.fleet.rollouts.reconcile_due`); asked to run
soon, it waits for the rollout's row instead.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from atoll import errors
from atoll.fleet import rollouts
from atoll.fleet.db import transaction

log = logging.getLogger(__name__)

#: Seconds between two reconciliations when nothing asks for one sooner.
RECONCILE_EVERY = 15.0


class Reconciler:
    """Reconciles the running rollouts every *every* seconds, and soon after
    :meth:`soon` is called (from any thread)."""

    def __init__(self, factory: sessionmaker[Session], every: float = RECONCILE_EVERY) -> None:
        self.factory = factory
        self.every = every
        self._asked = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def soon(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._asked.set)

    def _once(self, wait: bool) -> None:
        with transaction(self.factory) as session:
            rollouts.reconcile_due(session, wait=wait)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), self.every)
            # Asked: a report skipped a rollout held by another transaction, which
            # may have read the devices before that report; this one waits for the
            # row, so that it reads every report committed before it got it.
            asked = self._asked.is_set()
            self._asked.clear()
            try:
                await run_in_threadpool(self._once, asked)
            except (errors.AtollError, DBAPIError) as exc:
                # The database is down or a rollout cannot move: the next round tries again.
                log.warning("rollout reconciliation: %s", exc)
            except Exception:
                # Anything else is a bug, but rollouts must not stop moving until a
                # restart: say so with the traceback, and the next round tries again.
                log.exception("rollout reconciliation failed")
