"""Time as automatic updates see it: a clock that can be real or driven by a test."""

from __future__ import annotations

import datetime
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime.datetime:
        """The current instant, timezone-aware."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait *seconds* (a fake clock just moves on)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that stands still until a test (or a sleep) moves it."""

    def __init__(self, start: datetime.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        # Kept in UTC: Python adds to a zoned time on the wall clock.
        self._now = start.astimezone(datetime.UTC)
        #: Every sleep asked for, in seconds.
        self.sleeps: list[float] = []

    def now(self) -> datetime.datetime:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self._now += datetime.timedelta(seconds=seconds)

    def advance(self, delta: datetime.timedelta) -> None:
        self._now += delta

    def set(self, when: datetime.datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FakeClock needs timezone-aware times")
        self._now = when.astimezone(datetime.UTC)
