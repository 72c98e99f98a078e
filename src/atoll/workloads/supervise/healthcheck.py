"""Container health checks on a schedule kept by atoll, not by systemd timers.

podman starts a transient systemd timer per container to run its health
check; without systemd nothing runs it.  The supervisor runs
``podman healthcheck run CONTAINER`` itself and keeps the count::

    HealthCmd=CMD              the check (podman runs it in the container)
    HealthInterval=30s         time between checks ("disable": never by schedule)
    HealthRetries=3            consecutive failures that make the container unhealthy
    HealthStartPeriod=0s       failures in this time after the start do not count;
                               a pass ends it early
    HealthTimeout=30s          a check that runs longer fails
    HealthOnFailure=none       none | kill | restart | stop, done when the
                               container turns unhealthy

A start-up check (``HealthStartupCmd=``) gates the regular one, as
podman-run(1)'s ``--health-startup-*`` options do; podman before 5 has none of
them, so atoll runs it itself, with ``podman exec``::

    HealthStartupCmd=CMD       run in the container (a string: with /bin/sh -c;
                               a JSON array of two or more words: as it is)
    HealthStartupInterval=30s  time between start-up checks
    HealthStartupSuccess=0     passes needed before the regular check takes
                               over (0: the first pass)
    HealthStartupRetries=0     failures after which the container is stopped and
                               the unit ends "unhealthy", restarted as Restart=
                               says (0: never)
    HealthStartupTimeout=30s   a start-up check that runs longer fails

Schedule: one check as soon as the container runs, so that a container that
is ready at once turns healthy at once (a rollout's canary waits for that);
its failure does not count, and the next check runs a second after the
start (at most one interval; at once if that has passed), then every interval.

States: ``starting`` until the first pass (or until the retries run out after
the start period), ``healthy`` after a pass, ``unhealthy`` after HealthRetries
failures in a row; ``none`` when the unit has no HealthCmd.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from atoll.errors import CommandError, QuadletUnitError, ToolMissingError
from atoll.run import run
from atoll.workloads.control import Health
from atoll.workloads.unitfiles.quadlet import ContainerOptions
from atoll.workloads.unitfiles.restart import unit_timespan

log = logging.getLogger(__name__)


class OnFailure(StrEnum):
    NONE = "none"
    KILL = "kill"
    RESTART = "restart"
    STOP = "stop"


def _count(value: str | None, default: str, key: str, source: str, least: int) -> int:
    text = value or default
    if not text.isdigit() or int(text) < least:
        what = "a positive number" if least else "a number"
        raise QuadletUnitError(f"{source}: {key}={text} is not {what}")
    return int(text)


def check_argv(command: str) -> tuple[str, ...]:
    """What a health command runs in the container, read as podman reads
    ``--health-cmd``: a JSON array of two or more words runs as it is (after a
    leading ``CMD``), anything else with ``/bin/sh -c`` (after ``CMD-SHELL``)."""
    try:
        words = json.loads(command)
    except ValueError:
        words = None
    if isinstance(words, list) and all(isinstance(w, str) for w in words) and words:
        if words[0].upper() == "CMD":
            return tuple(words[1:])
        if words[0].upper() == "CMD-SHELL":
            return ("/bin/sh", "-c", " ".join(words[1:]))
        if len(words) > 1:
            return tuple(words)
        return ("/bin/sh", "-c", words[0])
    first, _, rest = command.strip().partition(" ")
    if first.upper() == "CMD":
        return tuple(rest.split())
    if first.upper() == "CMD-SHELL":
        return ("/bin/sh", "-c", rest)
    return ("/bin/sh", "-c", command)


@dataclass(frozen=True)
class StartupSpec:
    """``HealthStartup*=``: the check that runs until the container has started."""

    argv: tuple[str, ...]
    interval: float = 30.0
    retries: int = 0
    successes: int = 0
    timeout: float = 30.0


@dataclass(frozen=True)
class HealthSpec:
    interval: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    timeout: float = 30.0
    on_failure: OnFailure = OnFailure.NONE
    startup: StartupSpec | None = None

    @classmethod
    def from_options(cls, options: ContainerOptions, source: str) -> HealthSpec | None:
        """The unit's schedule, or None when it has no HealthCmd."""
        if not options.health_cmd or options.health_cmd.lower() == "none":
            if options.health_startup_cmd:
                raise QuadletUnitError(
                    f"{source}: HealthStartupCmd= needs HealthCmd=",
                    hint="the start-up check gates the regular one: add HealthCmd=",
                )
            return None

        def span(value: str | None, key: str, default: float) -> float:
            if not value:
                return default
            if value.lower() == "disable":
                return float("inf")
            return unit_timespan(value, what=f"{source}: {key}")

        retries = _count(options.health_retries, "3", "HealthRetries", source, 1)
        startup = None
        o = options
        if o.health_startup_cmd:
            startup = StartupSpec(
                argv=check_argv(o.health_startup_cmd),
                interval=span(o.health_startup_interval, "HealthStartupInterval", 30.0),
                retries=_count(o.health_startup_retries, "0", "HealthStartupRetries", source, 0),
                successes=_count(o.health_startup_success, "0", "HealthStartupSuccess", source, 0),
                timeout=span(o.health_startup_timeout, "HealthStartupTimeout", 30.0),
            )
        on_failure = (options.health_on_failure or "none").lower()
        try:
            action = OnFailure(on_failure)
        except ValueError:
            raise QuadletUnitError(
                f"{source}: HealthOnFailure={options.health_on_failure} is not an action",
                hint="use none, kill, restart or stop",
            ) from None
        return cls(
            interval=span(options.health_interval, "HealthInterval", 30.0),
            retries=retries,
            start_period=span(options.health_start_period, "HealthStartPeriod", 0.0),
            timeout=span(options.health_timeout, "HealthTimeout", 30.0),
            on_failure=action,
            startup=startup,
        )


class HealthTracker:
    """The health state of one container run, fed with the outcome of each check."""

    def __init__(self, spec: HealthSpec, started_at: float) -> None:
        self.spec = spec
        self.started_at = started_at
        self.status = Health.STARTING
        self.failing_streak = 0
        #: The start-up check, while it has not passed.
        self.startup = spec.startup
        self.startup_passes = 0
        self.startup_failures = 0
        # The first check runs at once; a start-up check keeps its own schedule
        # (its first run a second after the start).
        self.next_check = started_at + (min(spec.startup.interval, 1.0) if spec.startup else 0.0)
        #: The first regular check, run at once: its failure only says "not yet".
        self._early = True
        self._start_period_over = spec.start_period <= 0

    def record_startup(self, passed: bool, now: float) -> bool | None:
        """Account one start-up check at *now*: True when it has passed as often as
        HealthStartupSuccess= asks (the regular check takes over, its first run
        early), False when it failed HealthStartupRetries= times, else None."""
        startup = self.startup
        assert startup is not None
        self.next_check = now + startup.interval
        if passed:
            self.startup_passes += 1
            if self.startup_passes >= max(startup.successes, 1):
                self.startup = None
                self.next_check = now + min(self.spec.interval, 1.0)
                return True
            return None
        self.startup_failures += 1
        if startup.retries and self.startup_failures >= startup.retries:
            return False
        return None

    def due(self, now: float) -> bool:
        return now >= self.next_check

    @property
    def early(self) -> bool:
        """The first check, the one at once, has not run yet."""
        return self._early

    def record(self, passed: bool, now: float) -> Health:
        """Account one check at *now*; return the new status."""
        early, self._early = self._early, False
        self.next_check = now + self.spec.interval
        if passed:
            self.failing_streak = 0
            self._start_period_over = True
            self.status = Health.HEALTHY
            return self.status
        if early:
            # Then when the first check used to run (at once, if that has passed).
            self.next_check = self.started_at + min(self.spec.interval, 1.0)
            return self.status
        if not self._start_period_over and now - self.started_at < self.spec.start_period:
            return self.status  # failures while starting up do not count
        self._start_period_over = True
        self.failing_streak += 1
        if self.failing_streak >= self.spec.retries:
            self.status = Health.UNHEALTHY
        return self.status


def run_check(
    podman: str, container: str, env: Mapping[str, str], timeout: float
) -> tuple[bool, str]:
    """Run the container's health check once: (passed, output)."""
    return _run(podman, [podman, "healthcheck", "run", container], env, timeout, grace=10.0)


def run_startup_check(
    podman: str, container: str, spec: StartupSpec, env: Mapping[str, str]
) -> tuple[bool, str]:
    """Run the start-up check once in the container (``podman exec``): (passed, output)."""
    return _run(podman, [podman, "exec", container, *spec.argv], env, spec.timeout)


def _run(
    podman: str, argv: Sequence[str], env: Mapping[str, str], timeout: float, grace: float = 0.0
) -> tuple[bool, str]:
    try:
        proc = run(
            argv,
            env=env,
            timeout=timeout + grace if timeout != float("inf") else None,
            check=False,
        )
    except ToolMissingError:
        return False, f"{podman} is not installed"
    except CommandError:
        return False, f"the check ran longer than {timeout} s"
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    return proc.returncode == 0, output
