"""The health report: what one run of the checks found (JSON, version :data:`REPORT_VERSION`).

``atoll health run --json`` prints it and ``SYSROOT/atoll/health/last.json``
keeps the last one::

    {"version": 1,
     "deployment": "3a7f….0",            # the deployment whose checks ran ("" if unknown)
     "bootId": "1b2c…",                  # the boot they ran in
     "started": "2026-01-01T00:00:00Z",
     "finished": "2026-01-01T00:00:03Z",
     "outcome": "green" | "red",
     "attempt": 1 | null,                # which try of the deployment this is (null: not counted)
     "maxAttempts": 3 | null,            # tries it has in all
     "reason": null | {                  # the first required check that failed
         "name": "20-net.sh", "kind": "required",
         "path": "/etc/greenboot/check/required.d/20-net.sh",
         "exitCode": 3 | null, "problem": "timed out after 300 s" | null, "output": "…"},
     "checks": [{                        # in the order they ran (or would have)
         "name": "20-net.sh",
         "kind": "required" | "wanted" | "green" | "red" | "watchdog",
         "path": "/etc/greenboot/check/required.d/20-net.sh",   # inside the root; "(built-in)"
         "status": "passed" | "failed" | "disabled" | "skipped",
         "exitCode": 3 | null,           # null: it did not exit by itself (or did not run)
         "duration": 0.012,              # seconds
         "timedOut": false,
         "problem": null | "…",          # why it failed other than by its exit code, or was skipped
         "output": "…"}],                # stdout+stderr: first lines, […], last (execute.py)
     "warnings": ["…"]}                  # greenboot.conf and check-directory warnings

A check that was killed by a signal gets ``128 + N`` as its exit code, as a shell
reports it.  A report of a newer version is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from atoll.errors import InvalidInputError, SysrootVersionError
from atoll.health.checks import CheckKind

REPORT_VERSION = 1
#: The ``path`` of a check that atoll runs itself.
BUILTIN_PATH = "(built-in)"


class Outcome(StrEnum):
    GREEN = "green"
    RED = "red"


class CheckStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    #: Turned off by greenboot.conf.
    DISABLED = "disabled"
    #: Not run: masked, not executable (wanted, green, red), or wanted checks
    #: after a required one failed.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: CheckKind
    path: str
    status: CheckStatus
    exit_code: int | None = None
    duration: float = 0.0
    timed_out: bool = False
    problem: str | None = None
    output: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "path": self.path,
            "status": self.status.value,
            "exitCode": self.exit_code,
            "duration": self.duration,
            "timedOut": self.timed_out,
            "problem": self.problem,
            "output": self.output,
        }

    @classmethod
    def from_json(cls, data: Any) -> CheckResult:
        return cls(
            name=str(data["name"]),
            kind=CheckKind(data["kind"]),
            path=str(data["path"]),
            status=CheckStatus(data["status"]),
            exit_code=_opt_int(data.get("exitCode")),
            duration=float(data.get("duration", 0.0)),
            timed_out=bool(data.get("timedOut", False)),
            problem=_opt_str(data.get("problem")),
            output=str(data.get("output", "")),
        )


@dataclass(frozen=True)
class FailureReason:
    """Why a boot is red: the first required check that failed."""

    name: str
    kind: CheckKind
    path: str
    exit_code: int | None
    problem: str | None
    output: str

    @classmethod
    def of(cls, result: CheckResult) -> FailureReason:
        return cls(
            result.name, result.kind, result.path, result.exit_code, result.problem, result.output
        )

    def summary(self) -> str:
        """``required check 20-net.sh failed (exit code 3)``."""
        why = self.problem or (
            f"exit code {self.exit_code}" if self.exit_code is not None else "failed"
        )
        return f"{self.kind.value} check {self.name} failed ({why})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "path": self.path,
            "exitCode": self.exit_code,
            "problem": self.problem,
            "output": self.output,
        }

    @classmethod
    def from_json(cls, data: Any) -> FailureReason:
        return cls(
            name=str(data["name"]),
            kind=CheckKind(data["kind"]),
            path=str(data.get("path", "")),
            exit_code=_opt_int(data.get("exitCode")),
            problem=_opt_str(data.get("problem")),
            output=str(data.get("output", "")),
        )


@dataclass(frozen=True)
class HealthReport:
    deployment: str
    boot_id: str
    started: str
    finished: str
    outcome: Outcome
    checks: tuple[CheckResult, ...]
    reason: FailureReason | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def green(self) -> bool:
        return self.outcome is Outcome.GREEN

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "deployment": self.deployment,
            "bootId": self.boot_id,
            "started": self.started,
            "finished": self.finished,
            "outcome": self.outcome.value,
            "attempt": self.attempt,
            "maxAttempts": self.max_attempts,
            "reason": self.reason.to_json() if self.reason else None,
            "checks": [c.to_json() for c in self.checks],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "health report") -> HealthReport:
        check_version(data, where, "health report")
        try:
            reason = data.get("reason")
            return cls(
                deployment=str(data["deployment"]),
                boot_id=str(data["bootId"]),
                started=str(data["started"]),
                finished=str(data["finished"]),
                outcome=Outcome(data["outcome"]),
                checks=tuple(CheckResult.from_json(c) for c in data["checks"]),
                reason=FailureReason.from_json(reason) if reason is not None else None,
                attempt=_opt_int(data.get("attempt")),
                max_attempts=_opt_int(data.get("maxAttempts")),
                warnings=tuple(str(w) for w in data.get("warnings", ())),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidInputError(f"{where}: not a valid health report ({exc!r})") from None


def check_version(data: Any, where: str, what: str, supported: int = REPORT_VERSION) -> None:
    """Refuse a document that is not a JSON object or is newer than *supported*."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: not a JSON object")
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidInputError(f"{where}: 'version' is not a number")
    if version > supported:
        raise SysrootVersionError(
            f"{where}: {what} format {version} is newer than this atoll understands ({supported})",
            hint="use the atoll of the image that wrote it, or a newer atoll",
        )


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number or null, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
