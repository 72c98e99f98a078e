"""Cron expressions, as update windows use them.

Syntax (Vixie cron / cronie, five fields)::

    MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK
    0-59   0-23 1-31         1-12  0-7 (0 and 7 are Sunday)
                             jan-dec sun-sat (any case)

Each field is a comma-separated list of ``*``, ``N``, ``A-B``, ``*/STEP`` or
``A-B/STEP``; names work wherever numbers do (``mon-fri``, ``jan,jul``).
A range must not wrap (``22-2`` is refused: write ``22-23,0-2``) and a step
needs a range (``5/15`` is refused: write ``5-59/15``).  Shortcuts:
``@hourly`` = ``0 * * * *``, ``@daily``/``@midnight`` = ``0 0 * * *``,
``@weekly`` = ``0 0 * * 0``, ``@monthly`` = ``0 0 1 * *``,
``@yearly``/``@annually`` = ``0 0 1 1 *``.

**Day of month and day of week** combine as in cron: when both fields are
restricted (neither starts with ``*``), a day matches if *either* matches
(``0 0 1 * mon`` = the first of the month and every Monday); when one of them
starts with ``*``, a day must match both (so ``*/2`` in one of them counts as
"starts with ``*``", exactly as in Vixie cron).

**Time zones.**  An expression belongs to a zone and is matched against local
wall-clock time there.  An *instant* matches when its local time does, so:

* a local time that does not exist (the hour skipped when clocks go forward,
  02:00-02:59 in Europe/Berlin on the last Sunday of March) never matches:
  ``30 2 * * *`` does not fire that day, and the window ``* 2-4 * * *`` is
  open from 03:00 to 04:59 (two real hours);
* a local time that happens twice (02:00-02:59 when clocks go back) matches
  both times: ``30 2 * * *`` fires twice, ``* 2 * * *`` is open for two real
  hours.  :meth:`CronExpression.next_match` returns the earlier one first.

Every expression is checked when it is parsed; one that can never match
(``0 0 31 2 *``) is refused.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from atoll.errors import InvalidInputError

UTC = datetime.UTC
_ZERO = datetime.timedelta(0)

#: Offset changes within one zone larger than this (only historical date-line
#: moves) could make :meth:`CronExpression.next_match` miss an earlier match.
_MAX_SHIFT = datetime.timedelta(hours=3)
#: No valid expression waits longer than this for its next match (Feb 29 on a
#: given weekday comes back within 28 years).
_SEARCH_DAYS = 366 * 29

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

SHORTCUTS: Mapping[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_NUMBER = re.compile(r"[0-9]+")
_SYNTAX_HINT = (
    'five fields: minute hour day-of-month month day-of-week, e.g. "* 2-4 * * *" '
    '(02:00 to 04:59) or "* 3 * * sun"'
)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)}),
    _Field("day of week", 0, 7, {n: i for i, n in enumerate(_DAYS)}),
)


def _error(text: str, problem: str, hint: str = _SYNTAX_HINT) -> InvalidInputError:
    return InvalidInputError(f"cron expression {text!r}: {problem}", hint=hint)


def _value(text: str, spec: _Field, token: str) -> int:
    lowered = token.lower()
    if lowered in spec.names:
        return spec.names[lowered]
    if not _NUMBER.fullmatch(token):
        known = f" or a name ({spec.names and ', '.join(spec.names)})" if spec.names else ""
        raise _error(text, f"{spec.name}: {token!r} is not a number{known}")
    value = int(token)
    if not spec.low <= value <= spec.high:
        raise _error(text, f"{spec.name}: {value} is outside {spec.low}-{spec.high}")
    return value


def _parse_field(text: str, spec: _Field, source: str) -> frozenset[int]:
    values: set[int] = set()
    for item in source.split(","):
        if not item:
            raise _error(text, f"{spec.name}: empty item in the list {source!r}")
        part, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) == 0:
                raise _error(text, f"{spec.name}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if part == "*":
            low, high = spec.low, spec.high
        elif "-" in part:
            first, _, last = part.partition("-")
            if not first or not last:
                raise _error(text, f"{spec.name}: {part!r} is not a range like 2-4")
            low, high = _value(text, spec, first), _value(text, spec, last)
            if low > high:
                raise _error(
                    text,
                    f"{spec.name}: range {part!r} runs backwards",
                    hint=f"ranges do not wrap around; list both parts, e.g. "
                    f"{first}-{spec.high},{spec.low}-{last}",
                )
        else:
            if slash:
                raise _error(
                    text,
                    f"{spec.name}: a step needs a range: {item!r}",
                    hint=f"write {part}-{spec.high}/{step} or */{step}",
                )
            low = high = _value(text, spec, part)
        values.update(range(low, high + 1, step))
    if spec.name == "day of week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    """A parsed expression in a time zone; see the module docstring for its meaning."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    #: 0 = Sunday … 6 = Saturday.
    weekdays: frozenset[int]
    #: Whether the day-of-month / day-of-week field starts with ``*`` (cron's rule).
    days_star: bool
    weekdays_star: bool
    tz: datetime.tzinfo = UTC

    @classmethod
    def parse(cls, text: str, tz: datetime.tzinfo = UTC) -> CronExpression:
        expanded = text.strip()
        if expanded.startswith("@"):
            shortcut = SHORTCUTS.get(expanded.lower())
            if shortcut is None:
                raise _error(
                    text,
                    f"unknown shortcut {expanded!r}",
                    hint=f"use one of {', '.join(SHORTCUTS)} or five fields",
                )
            expanded = shortcut
        parts = expanded.split()
        if len(parts) != len(_FIELDS):
            raise _error(text, f"expected 5 fields, got {len(parts)}")
        sets = [_parse_field(text, spec, part) for spec, part in zip(_FIELDS, parts, strict=True)]
        expr = cls(
            text=text.strip(),
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=sets[4],
            days_star=parts[2].startswith("*"),
            weekdays_star=parts[4].startswith("*"),
            tz=tz,
        )
        if not expr._matches_some_day():
            raise _error(
                text,
                "no date ever matches (such as the 31st of a 30-day month)",
                hint="check the day-of-month and month fields",
            )
        return expr

    # --- matching -----------------------------------------------------------------------

    def day_matches(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return in_month and in_week
        return in_month or in_week

    def matches(self, at: datetime.datetime) -> bool:
        """Whether the minute holding instant *at* matches, in this expression's zone."""
        local = _aware(at).astimezone(self.tz)
        return local.minute in self.minutes and local.hour in self.hours and self.day_matches(local)

    def next_match(self, after: datetime.datetime) -> datetime.datetime:
        """The first whole minute strictly after *after* that matches, in this zone.

        Works on instants: a skipped local time is never returned, a repeated one
        can be returned twice (once per occurrence, earlier first)."""
        tz = self.tz
        after_utc = _aware(after).astimezone(UTC)
        # Clocks going back soon: walls a little before now still lie ahead.
        back = max(_ZERO, _offset(after_utc, tz) - _offset(after_utc + _MAX_SHIFT, tz))
        local = after_utc.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
        best: datetime.datetime | None = None
        stop: datetime.datetime | None = None
        for wall in self._walls(local - back):
            if stop is not None and wall > stop:
                break
            for instant in _instants(wall, tz):
                if instant > after_utc and (best is None or instant < best):
                    best = instant
                    # Found in the second pass of a repeated hour: later walls of
                    # that hour still have an earlier first pass.
                    shift = _offset(instant - _MAX_SHIFT, tz) - _offset(instant, tz)
                    stop = wall + max(_ZERO, shift)
        if best is None:  # pragma: no cover - parse() refuses expressions that never match
            raise _error(self.text, "no match in the next 29 years")
        return best.astimezone(tz)

    def _walls(self, start: datetime.datetime) -> Iterator[datetime.datetime]:
        """Matching local wall-clock minutes (naive) from *start* on, in order."""
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if day.month not in self.months:
                day = (day.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)
                continue
            if self.day_matches(day):
                for hour in hours:
                    for minute in minutes:
                        wall = datetime.datetime.combine(day, datetime.time(hour, minute))
                        if wall >= start:
                            yield wall
            day += datetime.timedelta(days=1)

    def _matches_some_day(self) -> bool:
        # 2000-2027 holds every (month, day, weekday) combination the calendar has.
        day = datetime.date(2000, 1, 1)
        while day.year < 2028:
            if self.day_matches(day):
                return True
            day += datetime.timedelta(days=1)
        return False

    def __str__(self) -> str:
        return self.text


def _aware(at: datetime.datetime) -> datetime.datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} has no time zone")
    return at


def _offset(instant: datetime.datetime, tz: datetime.tzinfo) -> datetime.timedelta:
    return instant.astimezone(tz).utcoffset() or _ZERO


def _instants(wall: datetime.datetime, tz: datetime.tzinfo) -> list[datetime.datetime]:
    """The UTC instants whose local time in *tz* is *wall*: none, one or two."""
    first = wall.replace(tzinfo=tz)
    second = wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    # Around a transition: a time in a gap exists in neither reading, a repeated
    # time in both.
    found: list[datetime.datetime] = []
    for candidate in (first, second):
        instant = candidate.astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == wall and instant not in found:
            found.append(instant)
    return found
