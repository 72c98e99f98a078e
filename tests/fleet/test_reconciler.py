"""The rollout reconciler's loop (atoll.fleet.reconciler): it keeps going
whatever one round raises.  No database: the round itself is replaced."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import OperationalError

from atoll.fleet.reconciler import Reconciler


def test_a_round_that_raises_does_not_stop_the_reconciler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rounds: list[bool] = []
    raises = [RuntimeError("a bug"), OperationalError("SELECT", {}, Exception("down")), None]

    def once(wait: bool) -> None:
        rounds.append(wait)
        error = raises[len(rounds) - 1] if len(rounds) <= len(raises) else None
        if error is not None:
            raise error

    async def main() -> None:
        reconciler = Reconciler(None, every=0.01)  # type: ignore[arg-type]
        monkeypatch.setattr(reconciler, "_once", once)
        task = asyncio.create_task(reconciler.run())

        async def rounds_done(count: int) -> None:
            while len(rounds) < count and not task.done():
                await asyncio.sleep(0.01)

        await rounds_done(3)
        reconciler.soon()  # asked: the next round waits for the rows
        await rounds_done(5)
        assert not task.done(), "the reconciler stopped"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rounds[:3] == [False, False, False] and True in rounds[3:]
    assert "rollout reconciliation failed" in caplog.text and "a bug" in caplog.text
    assert "rollout reconciliation: (builtins.Exception) down" in caplog.text
