"""Update windows: when something may happen, as the minutes a cron expression
matches, optionally shifted later by a per-device delay."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from atoll.updates.cron import CronExpression


@dataclass(frozen=True)
class Window:
    """When something may happen: the minutes a cron expression matches (None: any time).

    With a *delay*, the window is this one shifted later by the delay: open at
    instant t when the expression matches t - delay."""

    expression: CronExpression | None = None
    timezone: str = "UTC"

    @property
    def anytime(self) -> bool:
        return self.expression is None

    def is_open(
        self, at: datetime.datetime, delay: datetime.timedelta = datetime.timedelta(0)
    ) -> bool:
        # Arithmetic in UTC: Python adds to a zoned time on the wall clock.
        return self.expression is None or self.expression.matches(_utc(at) - delay)

    def next_open(
        self, at: datetime.datetime, delay: datetime.timedelta = datetime.timedelta(0)
    ) -> datetime.datetime:
        """*at* when the window is open then, else the instant it next opens."""
        if self.expression is None or self.is_open(at, delay):
            return at
        opens = _utc(self.expression.next_match(_utc(at) - delay)) + delay
        return opens.astimezone(self.expression.tz)

    def describe(self) -> str:
        return "anytime" if self.expression is None else f"{self.expression} ({self.timezone})"

    def to_json(self) -> dict[str, Any]:
        return {
            "window": str(self.expression) if self.expression else None,
            "timezone": self.timezone,
        }


def _utc(at: datetime.datetime) -> datetime.datetime:
    return at.astimezone(datetime.UTC)
