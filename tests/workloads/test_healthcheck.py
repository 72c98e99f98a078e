"""Health check schedule and state, as atoll keeps them without systemd timers."""

from __future__ import annotations

import pytest

from atoll.errors import QuadletUnitError
from atoll.workloads.control import Health
from atoll.workloads.supervise.healthcheck import (
    HealthSpec,
    HealthTracker,
    OnFailure,
    StartupSpec,
    check_argv,
)
from atoll.workloads.unitfiles.quadlet import ContainerOptions


def test_spec_from_options_with_defaults() -> None:
    assert HealthSpec.from_options(ContainerOptions(image="x"), "a.container") is None
    spec = HealthSpec.from_options(ContainerOptions(image="x", health_cmd="true"), "a.container")
    assert spec == HealthSpec(interval=30, retries=3, start_period=0, timeout=30)


def test_spec_from_options() -> None:
    options = ContainerOptions(
        image="x",
        health_cmd="curl -f localhost",
        health_interval="2s",
        health_retries="4",
        health_start_period="1m",
        health_timeout="500ms",
        health_on_failure="Restart",
    )
    spec = HealthSpec.from_options(options, "a.container")
    assert spec == HealthSpec(
        interval=2, retries=4, start_period=60, timeout=0.5, on_failure=OnFailure.RESTART
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("health_retries", "0", "HealthRetries=0"),
        ("health_on_failure", "explode", "HealthOnFailure=explode"),
        ("health_interval", "often", "HealthInterval=often"),
    ],
)
def test_bad_spec_names_the_key(field: str, value: str, message: str) -> None:
    options = ContainerOptions(image="x", health_cmd="true", **{field: value})
    with pytest.raises(QuadletUnitError, match=message):
        HealthSpec.from_options(options, "a.container")


def test_retries_in_a_row_make_it_unhealthy_and_a_pass_heals() -> None:
    tracker = HealthTracker(HealthSpec(interval=1, retries=3), started_at=0)
    assert tracker.status is Health.STARTING
    assert tracker.record(True, 1) is Health.HEALTHY
    assert tracker.record(False, 2) is Health.HEALTHY
    assert tracker.record(False, 3) is Health.HEALTHY
    assert tracker.record(True, 4) is Health.HEALTHY  # the streak is broken
    assert [tracker.record(False, t) for t in (5, 6, 7)] == [
        Health.HEALTHY,
        Health.HEALTHY,
        Health.UNHEALTHY,
    ]
    assert tracker.record(True, 8) is Health.HEALTHY


def test_failures_in_the_start_period_do_not_count() -> None:
    tracker = HealthTracker(HealthSpec(interval=1, retries=1, start_period=10), started_at=0)
    for t in range(1, 10):
        assert tracker.record(False, t) is Health.STARTING
    assert tracker.record(False, 11) is Health.UNHEALTHY


def test_a_pass_ends_the_start_period() -> None:
    tracker = HealthTracker(HealthSpec(interval=1, retries=1, start_period=10), started_at=0)
    assert tracker.record(True, 1) is Health.HEALTHY
    assert tracker.record(False, 2) is Health.UNHEALTHY


def test_schedule() -> None:
    tracker = HealthTracker(HealthSpec(interval=5), started_at=100)
    assert tracker.due(100)  # the first check at once, to find readiness soon
    tracker.record(True, 100.5)
    assert not tracker.due(105.4)
    assert tracker.due(105.5)


def test_the_first_check_at_once_does_not_count_when_it_fails() -> None:
    tracker = HealthTracker(HealthSpec(interval=5, retries=1), started_at=100)
    assert tracker.record(False, 100.2) is Health.STARTING
    assert not tracker.due(100.9)
    assert tracker.due(101)  # a second after the start, not an interval later
    assert tracker.record(False, 101.3) is Health.UNHEALTHY
    assert not tracker.due(106.2)
    assert tracker.due(106.3)


def test_startup_spec_from_options() -> None:
    options = ContainerOptions(
        image="x",
        health_cmd="true",
        health_startup_cmd="test -e /tmp/up",
        health_startup_interval="2s",
        health_startup_retries="5",
        health_startup_success="2",
        health_startup_timeout="1s",
    )
    spec = HealthSpec.from_options(options, "a.container")
    assert spec is not None and spec.startup == StartupSpec(
        argv=("/bin/sh", "-c", "test -e /tmp/up"), interval=2, retries=5, successes=2, timeout=1
    )
    alone = ContainerOptions(image="x", health_startup_cmd="true")
    with pytest.raises(QuadletUnitError, match="HealthStartupCmd= needs HealthCmd="):
        HealthSpec.from_options(alone, "a.container")
    bad = ContainerOptions(image="x", health_cmd="true", health_startup_cmd="true",
                           health_startup_success="-1")  # fmt: skip
    with pytest.raises(QuadletUnitError, match="HealthStartupSuccess=-1"):
        HealthSpec.from_options(bad, "a.container")


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("test -e /x", ("/bin/sh", "-c", "test -e /x")),
        ('["test", "-e", "/x"]', ("test", "-e", "/x")),
        ('["test -e /x"]', ("/bin/sh", "-c", "test -e /x")),
        ("CMD test -e /x", ("test", "-e", "/x")),
        ("CMD-SHELL test -e /x", ("/bin/sh", "-c", "test -e /x")),
        ('["CMD-SHELL", "test -e /x"]', ("/bin/sh", "-c", "test -e /x")),
    ],
)
def test_check_commands_read_as_podman_reads_them(command: str, argv: tuple[str, ...]) -> None:
    assert check_argv(command) == argv


def test_startup_passes_then_the_regular_check_takes_over() -> None:
    startup = StartupSpec(argv=("true",), interval=5, successes=2)
    tracker = HealthTracker(HealthSpec(interval=10, startup=startup), started_at=0)
    assert tracker.due(1) and not tracker.due(0.5)
    assert tracker.record_startup(False, 1) is None
    assert tracker.record_startup(True, 6) is None
    assert tracker.startup is startup and not tracker.due(10.9)
    assert tracker.record_startup(True, 11) is True
    assert tracker.startup is None and tracker.status is Health.STARTING
    assert tracker.due(12)  # the regular check's first run comes early
    assert tracker.record(True, 12) is Health.HEALTHY


def test_startup_gives_up_after_its_retries_and_never_without() -> None:
    tracker = HealthTracker(
        HealthSpec(startup=StartupSpec(argv=("false",), retries=3)), started_at=0
    )
    assert [tracker.record_startup(False, t) for t in (1, 2, 3)] == [None, None, False]
    endless = HealthTracker(HealthSpec(startup=StartupSpec(argv=("false",))), started_at=0)
    assert all(endless.record_startup(False, t) is None for t in range(1, 50))
