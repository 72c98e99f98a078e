"""Cron expressions: parsing, matching, and the next match across DST changes."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest

from atoll.errors import InvalidInputError
from atoll.updates.cron import SHORTCUTS, CronExpression

UTC = datetime.UTC
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE = datetime.timedelta(minutes=1)


def at(*args: int, tz: datetime.tzinfo = UTC, fold: int = 0) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=tz, fold=fold)  # type: ignore[misc]


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("0 9-17/2 * * *", "hours", {9, 11, 13, 15, 17}),
        ("1,5-7,*/20 * * * *", "minutes", {0, 1, 5, 6, 7, 20, 40}),
        ("0 0 1,15 * *", "days", {1, 15}),
        ("0 0 * jan,jul *", "months", {1, 7}),
        ("0 0 * JAN-Mar *", "months", {1, 2, 3}),
        ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
        ("0 0 * * 7", "weekdays", {0}),
        ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
        ("0 0 * * sun,SAT", "weekdays", {0, 6}),
        ("0 0 * * 0-7/3", "weekdays", {0, 3, 6}),
        ("59 23 31 12 *", "minutes", {59}),
        ("0-59/30 * * * *", "minutes", {0, 30}),
        ("*/90 * * * *", "minutes", {0}),
    ],
)
def test_fields(text: str, field: str, expected: set[int]) -> None:
    assert getattr(CronExpression.parse(text), field) == frozenset(expected)


@pytest.mark.parametrize("shortcut", sorted(SHORTCUTS))
def test_shortcuts_are_their_expansions(shortcut: str) -> None:
    short = CronExpression.parse(shortcut)
    full = CronExpression.parse(SHORTCUTS[shortcut])
    assert (short.minutes, short.hours, short.days, short.months, short.weekdays) == (
        full.minutes,
        full.hours,
        full.days,
        full.months,
        full.weekdays,
    )
    assert CronExpression.parse(shortcut.upper()).hours == short.hours


def test_daily_hourly_weekly_values() -> None:
    assert CronExpression.parse("@hourly").minutes == {0}
    assert CronExpression.parse("@hourly").hours == frozenset(range(24))
    assert CronExpression.parse("@daily").hours == {0}
    assert CronExpression.parse("@weekly").weekdays == {0}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected 5 fields, got 0"),
        ("* * * *", "expected 5 fields, got 4"),
        ("0 * * * * 2026", "expected 5 fields, got 6"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * 32 * *", "day of month: 32 is outside 1-31"),
        ("* * * 13 *", "month: 13 is outside 1-12"),
        ("* * * * 8", "day of week: 8 is outside 0-7"),
        ("* * * foo *", "month: 'foo' is not a number or a name (jan, feb"),
        ("* * * * monday", "day of week: 'monday' is not a number or a name"),
        ("x * * * *", "minute: 'x' is not a number"),
        ("-5 * * * *", "minute: '-5' is not a range like 2-4"),
        ("5- * * * *", "minute: '5-' is not a range like 2-4"),
        ("1,,2 * * * *", "minute: empty item in the list '1,,2'"),
        ("*/0 * * * *", "minute: step '0' is not a positive number"),
        ("*/x * * * *", "minute: step 'x' is not a positive number"),
        ("5/15 * * * *", "minute: a step needs a range: '5/15'"),
        ("* 22-2 * * *", "hour: range '22-2' runs backwards"),
        ("* * * * fri-mon", "day of week: range 'fri-mon' runs backwards"),
        ("@reboot", "unknown shortcut '@reboot'"),
        ("@often", "unknown shortcut '@often'"),
        ("0 0 31 2 *", "no date ever matches"),
        ("0 0 30,31 2 *", "no date ever matches"),
        ("0 0 31 4,6,9,11 *", "no date ever matches"),
        ("٣ * * * *", "minute: '٣' is not a number"),
    ],
)
def test_malformed_expressions_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        CronExpression.parse(text)
    assert info.value.message.startswith(f"cron expression {text!r}: ")
    assert problem in info.value.message
    assert info.value.hint


def test_backwards_range_hint_shows_the_list_to_write() -> None:
    with pytest.raises(InvalidInputError) as info:
        CronExpression.parse("* 22-2 * * *")
    assert info.value.hint is not None and "22-23,0-2" in info.value.hint


def test_step_without_range_hint() -> None:
    with pytest.raises(InvalidInputError) as info:
        CronExpression.parse("5/15 * * * *")
    assert info.value.hint is not None and "5-59/15" in info.value.hint


def test_leap_day_is_valid() -> None:
    expr = CronExpression.parse("0 0 29 2 *")
    assert expr.next_match(at(2026, 3, 1)) == at(2028, 2, 29)


# --- matching -------------------------------------------------------------------------------


def test_window_of_hours_is_open_from_first_to_last_minute() -> None:
    window = CronExpression.parse("* 2-4 * * *")
    assert not window.matches(at(2026, 5, 4, 1, 59, 59))
    assert window.matches(at(2026, 5, 4, 2, 0))
    assert window.matches(at(2026, 5, 4, 4, 59, 59))
    assert not window.matches(at(2026, 5, 4, 5, 0))


def test_minute_zero_window_is_one_minute() -> None:
    window = CronExpression.parse("0 2-4 * * *")
    assert window.matches(at(2026, 5, 4, 3, 0, 30))
    assert not window.matches(at(2026, 5, 4, 3, 1))


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    expr = CronExpression.parse("0 0 1 * mon")
    # 2026-06-01 is a Monday, 2026-06-08 a Monday, 2026-07-01 a Wednesday.
    assert expr.matches(at(2026, 6, 1))
    assert expr.matches(at(2026, 6, 8))
    assert expr.matches(at(2026, 7, 1))
    assert not expr.matches(at(2026, 6, 9))


def test_star_step_counts_as_star_for_day_rule() -> None:
    # Vixie cron: a field starting with '*' makes the two day fields combine with AND.
    expr = CronExpression.parse("0 0 */2 * mon")
    assert expr.matches(at(2026, 6, 1))  # odd day and Monday
    assert not expr.matches(at(2026, 6, 8))  # Monday, even day
    assert not expr.matches(at(2026, 6, 3))  # odd day, Wednesday


def test_star_weekday_means_day_of_month_alone() -> None:
    expr = CronExpression.parse("0 0 13 * *")
    assert expr.matches(at(2026, 2, 13))
    assert not expr.matches(at(2026, 2, 14))


def test_sunday_is_0_and_7() -> None:
    # 2026-05-03 is a Sunday.
    for text in ("0 12 * * 0", "0 12 * * 7", "0 12 * * sun"):
        assert CronExpression.parse(text).matches(at(2026, 5, 3, 12, 0))
        assert not CronExpression.parse(text).matches(at(2026, 5, 4, 12, 0))


def test_matching_uses_the_expressions_zone() -> None:
    window = CronExpression.parse("* 2 * * *", BERLIN)
    assert window.matches(at(2026, 1, 10, 1, 30))  # 02:30 CET
    assert not window.matches(at(2026, 1, 10, 2, 30))
    assert window.matches(at(2026, 7, 10, 0, 30))  # 02:30 CEST


def test_naive_times_are_refused() -> None:
    expr = CronExpression.parse("* * * * *")
    with pytest.raises(ValueError, match="no time zone"):
        expr.matches(datetime.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="no time zone"):
        expr.next_match(datetime.datetime(2026, 1, 1))


# --- next match -----------------------------------------------------------------------------


def test_next_match_is_strictly_after() -> None:
    expr = CronExpression.parse("30 2 * * *")
    assert expr.next_match(at(2026, 1, 1, 10, 0)) == at(2026, 1, 2, 2, 30)
    assert expr.next_match(at(2026, 1, 2, 2, 30)) == at(2026, 1, 3, 2, 30)
    assert expr.next_match(at(2026, 1, 2, 2, 29, 59)) == at(2026, 1, 2, 2, 30)


def test_next_match_every_minute() -> None:
    expr = CronExpression.parse("* * * * *")
    assert expr.next_match(at(2026, 1, 1, 12, 0, 30)) == at(2026, 1, 1, 12, 1)


def test_next_match_crosses_months_and_years() -> None:
    assert CronExpression.parse("0 0 1 1 *").next_match(at(2026, 1, 1, 0, 0)) == at(2027, 1, 1)
    assert CronExpression.parse("15 10 31 * *").next_match(at(2026, 4, 1)) == at(
        2026, 5, 31, 10, 15
    )
    # 2026-06-05 is a Friday.
    assert CronExpression.parse("* 3 * * fri").next_match(at(2026, 6, 1)) == at(2026, 6, 5, 3, 0)


def test_next_match_returns_the_expressions_zone() -> None:
    found = CronExpression.parse("0 3 * * *", BERLIN).next_match(at(2026, 1, 1, 12, 0))
    assert found.tzinfo is BERLIN
    assert (found.hour, found.minute) == (3, 0)
    assert found == at(2026, 1, 2, 2, 0)


def test_spring_forward_skips_the_missing_hour() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:xx does not exist.
    daily = CronExpression.parse("30 2 * * *", BERLIN)
    first = daily.next_match(at(2026, 3, 28, 12, 0, tz=BERLIN))
    assert first == at(2026, 3, 30, 2, 30, tz=BERLIN)
    window = CronExpression.parse("* 2-4 * * *", BERLIN)
    opens = window.next_match(at(2026, 3, 29, 1, 59, tz=BERLIN))
    assert opens == at(2026, 3, 29, 3, 0, tz=BERLIN)
    # One real minute later (same-zone subtraction in Python would use wall time).
    assert opens.astimezone(UTC) - at(2026, 3, 29, 1, 59, tz=BERLIN).astimezone(UTC) == MINUTE
    assert window.matches(at(2026, 3, 29, 1, 0))  # 03:00 CEST
    assert not window.matches(at(2026, 3, 29, 0, 59))  # 01:59 CET


def test_fall_back_matches_the_repeated_hour_twice() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:xx happens twice.
    daily = CronExpression.parse("30 2 * * *", BERLIN)
    first = daily.next_match(at(2026, 10, 24, 12, 0, tz=BERLIN))
    second = daily.next_match(first)
    third = daily.next_match(second)
    # (Compared in UTC: Python's == between zones is False for a repeated local time.)
    assert first.astimezone(UTC) == at(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert second.astimezone(UTC) == at(2026, 10, 25, 1, 30)  # 02:30 CET
    assert (second.hour, second.minute, second.fold) == (2, 30, 1)
    assert third.astimezone(UTC) == at(2026, 10, 26, 1, 30)


def test_fall_back_second_pass_after_a_later_first_pass_minute() -> None:
    # At 02:40 (first pass) the next matches are 02:45 first pass, then 02:30 and
    # 02:45 of the second pass.
    expr = CronExpression.parse("30,45 2 * * *", BERLIN)
    start = at(2026, 10, 25, 2, 40, tz=BERLIN)
    seen = [start]
    for _ in range(3):
        seen.append(expr.next_match(seen[-1]))
    assert [t.astimezone(UTC) for t in seen[1:]] == [
        at(2026, 10, 25, 0, 45),
        at(2026, 10, 25, 1, 30),
        at(2026, 10, 25, 1, 45),
    ]


def test_fall_back_from_before_the_transition_finds_the_second_pass() -> None:
    expr = CronExpression.parse("0 2 * * *", BERLIN)
    # 02:30 CEST: 02:00 CEST has passed, 02:00 CET (an hour later in real time) has not.
    assert expr.next_match(at(2026, 10, 25, 0, 30)).astimezone(UTC) == at(2026, 10, 25, 1, 0)


@pytest.mark.parametrize(
    "text", ["* 2 * * *", "30 2 * * *", "*/7 1-3 * * *", "59 1 * * *", "0 3 * * sun", "0 * * * *"]
)
@pytest.mark.parametrize(
    "start",
    [
        at(2026, 3, 28, 22, 0, tz=BERLIN),
        at(2026, 10, 24, 22, 0, tz=BERLIN),
        at(2026, 10, 25, 2, 17, tz=BERLIN, fold=0),
        at(2026, 10, 25, 2, 17, tz=BERLIN, fold=1),
    ],
)
def test_next_match_agrees_with_a_minute_by_minute_scan(
    text: str, start: datetime.datetime
) -> None:
    expr = CronExpression.parse(text, BERLIN)
    t = start.astimezone(UTC)
    for _ in range(8):
        found = expr.next_match(t)
        probe = t.replace(second=0, microsecond=0) + MINUTE
        while not expr.matches(probe):
            probe += MINUTE
        assert found.astimezone(UTC) == probe, (text, t)
        t = found.astimezone(UTC)
