"""``atoll.timeutil``: the one time-span grammar and the one timestamp format."""

from __future__ import annotations

import datetime

import pytest

from atoll.timeutil import human_time, parse_timespan, utc_timestamp

#: Time spans as systemd.time(7) writes them, and their seconds.
SPANS = {
    "5": 5.0,
    "500ms": 0.5,
    "1min 30s": 90.0,
    "1h30m": 5400.0,
    "2 days": 172800.0,
    "1.5h": 5400.0,
    "infinity": float("inf"),
}


def test_systemd_time_spans() -> None:
    assert {text: parse_timespan(text) for text in SPANS} == pytest.approx(SPANS)


def test_a_bare_number_is_in_the_default_unit() -> None:
    assert parse_timespan("250", default_unit=1e-3) == pytest.approx(0.25)


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "5s later", "1h-5m"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration|unknown time unit"):
        parse_timespan(text)


@pytest.mark.parametrize("text", ["1.5h", "500ms", "30m30", "infinity"])
def test_whole_seconds_refuses_what_is_not(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timespan(text, whole_seconds=True, infinity=False)


def test_whole_seconds_keeps_the_plain_forms() -> None:
    assert parse_timespan("1h 30m 15s", whole_seconds=True) == 5415.0
    assert parse_timespan("45", whole_seconds=True) == 45.0


def test_timestamps_are_utc_with_a_z() -> None:
    when = datetime.datetime(
        2026, 1, 2, 4, 5, 6, 789, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    assert utc_timestamp(when) == "2026-01-02T02:05:06Z"
    assert utc_timestamp(when, microseconds=True) == "2026-01-02T02:05:06.000789Z"
    assert utc_timestamp(datetime.datetime(2026, 1, 2)) == "2026-01-02T00:00:00Z"
    assert utc_timestamp().endswith("Z")


def test_fractions_are_cut_to_the_digits_asked() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=datetime.UTC)
    assert utc_timestamp(when, digits=2) == "2026-01-02T03:04:05.67Z"
    assert utc_timestamp(when, digits=3) == "2026-01-02T03:04:05.678Z"
    assert utc_timestamp(when.timestamp()) == "2026-01-02T03:04:05Z"
    assert (
        utc_timestamp(when.replace(microsecond=250_000), digits=None) == "2026-01-02T03:04:05.25Z"
    )
    assert utc_timestamp(when.replace(microsecond=0), digits=None) == "2026-01-02T03:04:05Z"
    with pytest.raises(ValueError, match="0 to 6"):
        utc_timestamp(when, digits=7)


def test_times_for_people_are_in_the_zone_asked() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert human_time(when) == "2026-01-02 03:04 UTC"
    assert human_time(when, "Europe/Berlin") == "2026-01-02 04:04 CET"
    assert human_time(when.timestamp(), seconds=True) == "2026-01-02 03:04:05 UTC"
