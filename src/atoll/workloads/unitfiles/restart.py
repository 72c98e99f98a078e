"""systemd's service settings as the supervisor honours them, and the ``Restart=`` table.

Read from the generated service (``[Unit]`` and ``[Service]`` of the Quadlet
unit are passed through to it)::

    [Unit]
    StartLimitIntervalSec=10s    starts counted in this window (0 = no limit)
    StartLimitBurst=5            more starts than this in the window: start-limit-hit
    [Service]
    Restart=no                   no|always|on-success|on-failure|on-abnormal|on-abort|on-watchdog
    RestartSec=100ms             pause before an automatic restart
    TimeoutStartSec=90s          until READY=1 (or the first healthy check); infinity = none
    TimeoutStopSec=90s           for the stop command
    WatchdogSec=0                WATCHDOG=1 must arrive this often once active (0 = off)
    SuccessExitStatus=           more exit codes / signal names that count as clean
    RestartPreventExitStatus=    exit codes / signal names that never restart

Which end of a run restarts under which setting (systemd.service(5))::

    end of the run              no always on-success on-failure on-abnormal on-abort on-watchdog
    clean exit code or signal        X      X
    unclean exit code                X                 X
    unclean signal                   X                 X          X           X
    timeout                          X                 X          X
    watchdog                         X                 X          X                    X

Clean: exit code 0, the signals HUP, INT, TERM and PIPE, and what
SuccessExitStatus= adds.  A container's exit status 128+N means it was killed
by signal N (podman reports it so).  A unit stopped on request is never restarted.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from atoll.errors import QuadletUnitError
from atoll.timeutil import parse_timespan


class RestartPolicy(StrEnum):
    NO = "no"
    ALWAYS = "always"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_ABORT = "on-abort"
    ON_WATCHDOG = "on-watchdog"


class Result(StrEnum):
    """How a unit's last run ended (systemd's ``Result=``), plus atoll's ``unhealthy``."""

    SUCCESS = "success"
    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    TIMEOUT = "timeout"
    WATCHDOG = "watchdog"
    START_LIMIT_HIT = "start-limit-hit"
    UNHEALTHY = "unhealthy"
    DEPENDENCY = "dependency"
    RESOURCES = "resources"


class EndKind(StrEnum):
    """The rows of the restart table."""

    CLEAN = "clean"
    UNCLEAN_CODE = "unclean-exit-code"
    UNCLEAN_SIGNAL = "unclean-signal"
    TIMEOUT = "timeout"
    WATCHDOG = "watchdog"


_C, _U, _S, _T, _W = (
    EndKind.CLEAN,
    EndKind.UNCLEAN_CODE,
    EndKind.UNCLEAN_SIGNAL,
    EndKind.TIMEOUT,
    EndKind.WATCHDOG,
)
#: RestartPolicy -> the ends of a run after which the unit is restarted.
RESTART_TABLE: dict[RestartPolicy, frozenset[EndKind]] = {
    RestartPolicy.NO: frozenset(),
    RestartPolicy.ALWAYS: frozenset({_C, _U, _S, _T, _W}),
    RestartPolicy.ON_SUCCESS: frozenset({_C}),
    RestartPolicy.ON_FAILURE: frozenset({_U, _S, _T, _W}),
    RestartPolicy.ON_ABNORMAL: frozenset({_S, _T, _W}),
    RestartPolicy.ON_ABORT: frozenset({_S}),
    RestartPolicy.ON_WATCHDOG: frozenset({_W}),
}

CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})


def unit_timespan(text: str, *, what: str = "time span", default_unit: float = 1.0) -> float:
    """Seconds in a unit file's time span (``5``, ``500ms``, ``1min 30s``, ``infinity``)."""
    try:
        return parse_timespan(text, default_unit=default_unit)
    except ValueError as exc:
        raise QuadletUnitError(
            f"{what}={text}: {exc}", hint="write e.g. 5s, 500ms or 1min 30s"
        ) from None


def _signal_number(word: str) -> int | None:
    name = word.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None


@dataclass(frozen=True)
class ExitStatusSet:
    """Exit codes and signals named by SuccessExitStatus= or RestartPreventExitStatus=."""

    codes: frozenset[int] = frozenset()
    signals: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, values: Iterable[str], what: str) -> ExitStatusSet:
        codes: set[int] = set()
        signals: set[int] = set()
        for value in values:
            if not value.strip():
                codes.clear()
                signals.clear()
                continue
            for word in value.split():
                if word.isdigit():
                    codes.add(int(word))
                    continue
                number = _signal_number(word)
                if number is None:
                    raise QuadletUnitError(
                        f"{what}={value}: {word!r} is not an exit code or signal name"
                    )
                signals.add(number)
        return cls(frozenset(codes), frozenset(signals))

    def matches(self, exit_status: int) -> bool:
        if exit_status in self.codes:
            return True
        return exit_status > 128 and exit_status - 128 in self.signals


@dataclass(frozen=True)
class ServiceSettings:
    restart: RestartPolicy = RestartPolicy.NO
    restart_sec: float = 0.1
    timeout_start: float = 90.0
    timeout_stop: float = 90.0
    watchdog: float = 0.0
    start_limit_interval: float = 10.0
    start_limit_burst: int = 5
    success_status: ExitStatusSet = field(default_factory=ExitStatusSet)
    prevent_status: ExitStatusSet = field(default_factory=ExitStatusSet)

    @classmethod
    def from_values(
        cls, unit: Sequence[tuple[str, str]], service: Sequence[tuple[str, str]], *, source: str
    ) -> ServiceSettings:
        """Settings from the ``[Unit]`` and ``[Service]`` assignments of a service."""

        def last(pairs: Sequence[tuple[str, str]], key: str) -> str | None:
            found = [v for k, v in pairs if k == key]
            return found[-1] if found and found[-1] != "" else None

        def span(pairs: Sequence[tuple[str, str]], key: str, default: float) -> float:
            value = last(pairs, key)
            return default if value is None else unit_timespan(value, what=f"{source}: {key}")

        restart_text = last(service, "Restart") or "no"
        try:
            restart = RestartPolicy(restart_text)
        except ValueError:
            raise QuadletUnitError(
                f"{source}: Restart={restart_text} is not a restart policy",
                hint="use " + ", ".join(p.value for p in RestartPolicy),
            ) from None
        timeout = span(service, "TimeoutSec", 90.0)
        burst_text = last(unit, "StartLimitBurst") or "5"
        if not burst_text.isdigit():
            raise QuadletUnitError(f"{source}: StartLimitBurst={burst_text} is not a number")
        timeout_start = span(service, "TimeoutStartSec", timeout)
        return cls(
            restart=restart,
            restart_sec=span(service, "RestartSec", 0.1),
            timeout_start=timeout_start if timeout_start > 0 else float("inf"),
            timeout_stop=span(service, "TimeoutStopSec", timeout),
            watchdog=span(service, "WatchdogSec", 0.0),
            start_limit_interval=span(unit, "StartLimitIntervalSec", 10.0),
            start_limit_burst=int(burst_text),
            success_status=ExitStatusSet.parse(
                [v for k, v in service if k == "SuccessExitStatus"], f"{source}: SuccessExitStatus"
            ),
            prevent_status=ExitStatusSet.parse(
                [v for k, v in service if k == "RestartPreventExitStatus"],
                f"{source}: RestartPreventExitStatus",
            ),
        )

    def classify(self, exit_status: int | None) -> tuple[Result, EndKind]:
        """The result and the row of the restart table for a run that ended by itself."""
        if exit_status is None:
            return Result.EXIT_CODE, EndKind.UNCLEAN_CODE
        if exit_status == 0 or self.success_status.matches(exit_status):
            return Result.SUCCESS, EndKind.CLEAN
        if exit_status > 128:
            number = exit_status - 128
            if number in CLEAN_SIGNALS:
                return Result.SUCCESS, EndKind.CLEAN
            if number in {int(s) for s in signal.Signals}:
                return Result.SIGNAL, EndKind.UNCLEAN_SIGNAL
        return Result.EXIT_CODE, EndKind.UNCLEAN_CODE

    def should_restart(self, end: EndKind, exit_status: int | None = None) -> bool:
        if exit_status is not None and self.prevent_status.matches(exit_status):
            return False
        return end in RESTART_TABLE[self.restart]


class StartLimit:
    """Counts starts in a sliding window: more than *burst* in *interval* is a hit."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self.starts: deque[float] = deque()

    def allow(self, now: float | None = None) -> bool:
        """Record a start at *now* if the limit allows it; False when the limit is hit."""
        if self.interval <= 0 or self.burst <= 0:
            return True
        at = time.monotonic() if now is None else now
        while self.starts and at - self.starts[0] >= self.interval:
            self.starts.popleft()
        if len(self.starts) >= self.burst:
            return False
        self.starts.append(at)
        return True

    def reset(self) -> None:
        self.starts.clear()
