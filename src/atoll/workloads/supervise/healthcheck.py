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

Schedule: one check as soon as the container runs, so that a container that
is ready at once turns healthy at once (a rollout's canary waits for that);
its failure does not count, and the next check runs a second after the
start (at most one interval; at once if that has passed), then every interval.

States: ``starting`` until the first pass (or until the retries run out after
the start period), ``healthy`` after a pass, ``unhealthy`` after HealthRetries
failures in a row; ``none`` when the unit has no HealthCmd.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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


@dataclass(frozen=True)
class HealthSpec:
    interval: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    timeout: float = 30.0
    on_failure: OnFailure = OnFailure.NONE

    @classmethod
    def from_options(cls, options: ContainerOptions, source: str) -> HealthSpec | None:
        """The unit's schedule, or None when it has no HealthCmd."""
        if not options.health_cmd or options.health_cmd.lower() == "none":
            return None

        def span(value: str | None, key: str, default: float) -> float:
            if not value:
                return default
            if value.lower() == "disable":
                return float("inf")
            return unit_timespan(value, what=f"{source}: {key}")

        retries = options.health_retries or "3"
        if not retries.isdigit() or int(retries) < 1:
            raise QuadletUnitError(f"{source}: HealthRetries={retries} is not a positive number")
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
            retries=int(retries),
            start_period=span(options.health_start_period, "HealthStartPeriod", 0.0),
            timeout=span(options.health_timeout, "HealthTimeout", 30.0),
            on_failure=action,
        )


class HealthTracker:
    """The health state of one container run, fed with the outcome of each check."""

    def __init__(self, spec: HealthSpec, started_at: float) -> None:
        self.spec = spec
        self.started_at = started_at
        self.status = Health.STARTING
        self.failing_streak = 0
        self.next_check = started_at
        #: The first check, run at once: its failure only says "not yet".
        self._early = True
        self._start_period_over = spec.start_period <= 0

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
    argv = [podman, "healthcheck", "run", container]
    try:
        proc = run(
            argv,
            env=env,
            timeout=timeout + 10.0 if timeout != float("inf") else None,
            check=False,
        )
    except ToolMissingError:
        return False, f"{podman} is not installed"
    except CommandError:
        return False, f"the check ran longer than {timeout} s"
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    return proc.returncode == 0, output
