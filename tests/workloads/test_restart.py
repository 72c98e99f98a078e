"""The Restart= table, exit status classification, time spans and the start limit."""

from __future__ import annotations

import pytest

from atoll.errors import QuadletUnitError
from atoll.workloads.unitfiles.restart import (
    EndKind,
    RestartPolicy,
    Result,
    ServiceSettings,
    StartLimit,
)
from atoll.workloads.unitfiles.restart import (
    unit_timespan as parse_timespan,
)

# systemd.service(5), "Table 2. Exit causes and the effect of the Restart= settings".
TABLE = {
    EndKind.CLEAN: {"always", "on-success"},
    EndKind.UNCLEAN_CODE: {"always", "on-failure"},
    EndKind.UNCLEAN_SIGNAL: {"always", "on-failure", "on-abnormal", "on-abort"},
    EndKind.TIMEOUT: {"always", "on-failure", "on-abnormal"},
    EndKind.WATCHDOG: {"always", "on-failure", "on-abnormal", "on-watchdog"},
}


@pytest.mark.parametrize("policy", list(RestartPolicy))
@pytest.mark.parametrize("end", list(EndKind))
def test_restart_table_matches_systemd(policy: RestartPolicy, end: EndKind) -> None:
    settings = ServiceSettings(restart=policy)
    assert settings.should_restart(end) is (policy.value in TABLE[end])


@pytest.mark.parametrize(
    ("status", "result", "end"),
    [
        (0, Result.SUCCESS, EndKind.CLEAN),
        (1, Result.EXIT_CODE, EndKind.UNCLEAN_CODE),
        (3, Result.EXIT_CODE, EndKind.UNCLEAN_CODE),
        (137, Result.SIGNAL, EndKind.UNCLEAN_SIGNAL),  # SIGKILL
        (134, Result.SIGNAL, EndKind.UNCLEAN_SIGNAL),  # SIGABRT
        (143, Result.SUCCESS, EndKind.CLEAN),  # SIGTERM is clean
        (129, Result.SUCCESS, EndKind.CLEAN),  # SIGHUP
        (130, Result.SUCCESS, EndKind.CLEAN),  # SIGINT
        (141, Result.SUCCESS, EndKind.CLEAN),  # SIGPIPE
        (None, Result.EXIT_CODE, EndKind.UNCLEAN_CODE),
    ],
)
def test_classify_exit_status(status: int | None, result: Result, end: EndKind) -> None:
    assert ServiceSettings().classify(status) == (result, end)


def _settings(unit: list[tuple[str, str]], service: list[tuple[str, str]]) -> ServiceSettings:
    return ServiceSettings.from_values(unit, service, source="web.container")


def test_success_and_prevent_exit_status() -> None:
    settings = _settings(
        [],
        [
            ("Restart", "always"),
            ("SuccessExitStatus", "3 SIGUSR1"),
            ("RestartPreventExitStatus", "42 SIGKILL"),
        ],
    )
    assert settings.classify(3) == (Result.SUCCESS, EndKind.CLEAN)
    assert settings.classify(128 + 10) == (Result.SUCCESS, EndKind.CLEAN)
    assert settings.should_restart(EndKind.UNCLEAN_CODE, 1)
    assert not settings.should_restart(EndKind.UNCLEAN_CODE, 42)
    assert not settings.should_restart(EndKind.UNCLEAN_SIGNAL, 137)


def test_settings_from_unit_and_service_sections() -> None:
    settings = _settings(
        [("StartLimitIntervalSec", "30s"), ("StartLimitBurst", "2")],
        [("Restart", "on-abnormal"), ("RestartSec", "500ms"), ("TimeoutStartSec", "1min 5s")],
    )
    assert settings.restart is RestartPolicy.ON_ABNORMAL
    assert settings.restart_sec == pytest.approx(0.5)
    assert settings.timeout_start == 65
    assert (settings.start_limit_interval, settings.start_limit_burst) == (30, 2)
    defaults = _settings([], [])
    assert defaults.restart is RestartPolicy.NO
    assert (defaults.start_limit_interval, defaults.start_limit_burst) == (10, 5)
    assert defaults.timeout_start == 90


def test_bad_settings_name_the_file() -> None:
    with pytest.raises(QuadletUnitError, match=r"web.container: Restart=sometimes"):
        _settings([], [("Restart", "sometimes")])
    with pytest.raises(QuadletUnitError, match="StartLimitBurst=many"):
        _settings([("StartLimitBurst", "many")], [])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 5.0),
        ("5s", 5.0),
        ("500ms", 0.5),
        ("1min 30s", 90.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("infinity", float("inf")),
    ],
)
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "5s later"])
def test_parse_timespan_refuses_garbage(text: str) -> None:
    with pytest.raises(QuadletUnitError):
        parse_timespan(text)


def test_start_limit_counts_starts_in_the_window() -> None:
    limit = StartLimit(interval=10, burst=3)
    assert [limit.allow(t) for t in (0, 1, 2)] == [True, True, True]
    assert not limit.allow(3)
    assert limit.allow(10.5)  # the start at 0 has left the window
    limit.reset()
    assert limit.allow(10.6) and limit.allow(10.7)


def test_start_limit_zero_interval_means_no_limit() -> None:
    limit = StartLimit(interval=0, burst=1)
    assert all(limit.allow(t) for t in range(20))
