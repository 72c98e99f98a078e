"""One time vocabulary: systemd's time spans in, RFC 3339 UTC timestamps out.

:func:`parse_timespan` reads every duration atoll is given (unit files,
updates.toml, command-line options) with systemd's time-span grammar
(systemd.time(7)): numbers with units, added up, ``1min 30s`` or ``1h30m``; a
number without a unit is in *default_unit*, and ``infinity`` stands alone.
Callers turn its ``ValueError`` into their own error, which names the file and key.

:func:`utc_timestamp` writes every time atoll records (``2026-01-01T00:00:00Z``,
with a fraction of a second where order within a second matters), and
:func:`human_time` every time it shows people (``2026-01-01 09:30 CET``).  No
other module formats a time.
"""

from __future__ import annotations

import datetime
import re

#: Unit name -> seconds (the lower-case units of systemd.time(7)).
TIME_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_WHOLE = re.compile(r"\d+")


def parse_timespan(
    text: str,
    *,
    default_unit: float = 1.0,
    whole_seconds: bool = False,
    infinity: bool = True,
) -> float:
    """Seconds in a time span (``5``, ``500ms``, ``1min 30s``, ``1h30m``).

    *whole_seconds*, for settings counted in seconds (updates.toml): whole
    numbers only, no unit below a second, and a unit on every number unless
    one stands alone (``30m30`` is refused, as its last unit is unclear).
    *infinity*: whether ``infinity`` is allowed.  Raises ValueError naming
    what is wrong."""
    value = text.strip().lower()
    if value == "infinity" and infinity:
        return float("inf")
    pos, total, parts, bare = 0, 0.0, 0, False
    for match in _SPAN.finditer(value):
        if value[pos : match.start()].strip():
            break
        number, unit = match.groups()
        if unit and unit not in TIME_UNITS:
            raise ValueError(f"unknown time unit {unit!r}")
        if whole_seconds and (not _WHOLE.fullmatch(number) or TIME_UNITS.get(unit, 1.0) < 1.0):
            raise ValueError("not a duration in whole seconds")
        bare = bare or not unit
        total += float(number) * (TIME_UNITS[unit] if unit else default_unit)
        pos, parts = match.end(), parts + 1
    if not parts or value[pos:].strip() or (bare and parts > 1 and whole_seconds):
        raise ValueError("not a duration")
    return total


def utc_timestamp(
    when: datetime.datetime | float | None = None,
    *,
    microseconds: bool = False,
    digits: int | None = 0,
) -> str:
    """*when* (default: now; a number is seconds since the epoch) in UTC as
    RFC 3339, ``2026-01-01T00:00:00Z``.  *digits* (1 to 6) adds that many
    digits of the second's fraction, cut, not rounded; None adds as many as
    the time has, without trailing zeros (Go's RFC3339Nano, for records read
    back exactly); *microseconds* is ``digits=6`` (for records ordered within
    a second).  A naive *when* is taken as UTC."""
    when = _aware(when)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{when.microsecond:06d}"
    if microseconds:
        digits = 6
    elif digits is None:
        fraction, digits = fraction.rstrip("0"), 6
    if not 0 <= digits <= 6:
        raise ValueError(f"{digits} digits of a second: 0 to 6 are possible")
    if digits and fraction[:digits]:
        text += "." + fraction[:digits]
    return text + "Z"


def human_time(
    when: datetime.datetime | float | None = None,
    zone: str = "UTC",
    *,
    seconds: bool = False,
) -> str:
    """*when* (default: now; a number is seconds since the epoch) for people:
    in *zone* (an IANA name) with its abbreviation, ``2026-01-01 09:30 CET``;
    *seconds* adds them.  A naive *when* is taken as UTC."""
    from zoneinfo import ZoneInfo  # only where a time is shown: keeps start-up lean

    local = _aware(when).astimezone(ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def _aware(when: datetime.datetime | float | None) -> datetime.datetime:
    """*when* as an aware datetime in UTC (now when None; a number is epoch seconds)."""
    if when is None:
        return datetime.datetime.now(datetime.UTC)
    if isinstance(when, int | float):
        return datetime.datetime.fromtimestamp(when, datetime.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)
