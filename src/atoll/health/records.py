"""The health state a device keeps in its sysroot (version :data:`RECORDS_VERSION`).

::

    SYSROOT/atoll/health/
    ├── last.json        the report of the last run of the checks (atoll.health.report)
    ├── history.jsonl    one line per run, oldest first, the last HISTORY_LIMIT runs:
    │                    {"version": 1, "time", "deployment", "bootId", "outcome",
    │                     "attempt", "maxAttempts", "reason": null | {"name", "exitCode"}}
    └── rollbacks.json   {"version": 1, "rollbacks": [...]}, oldest first, the last
                         ROLLBACK_LIMIT automatic rollbacks:
                         {"time", "from", "to", "attemptsUsed", "reason": null | {"name",
                          "kind", "path", "exitCode", "problem", "output"}}

Every file is replaced whole and atomically (temporary name, fsync, rename,
fsync of the directory); an append is read, add, trim, replace, under an
``flock`` of the directory, so two writers cannot lose each other's line.  A
document or line of a newer version is refused (``SysrootVersionError``); one
that cannot be read is an ``InvalidInputError`` naming the file and line.

This module knows the sysroot only as a directory: it is imported in booted
systems where the rest of atoll's device code is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import InvalidInputError, from_oserror
from atoll.fsutil import locked_dir, write_atomic
from atoll.health.report import FailureReason, HealthReport, Outcome, check_version

RECORDS_VERSION = 1
HEALTH_DIR = Path("atoll") / "health"
LAST = "last.json"
HISTORY = "history.jsonl"
ROLLBACKS = "rollbacks.json"
HISTORY_LIMIT = 50
ROLLBACK_LIMIT = 50


@dataclass(frozen=True)
class BootOutcome:
    """One line of the history: how one run of the checks ended."""

    time: str
    deployment: str
    boot_id: str
    outcome: Outcome
    attempt: int | None = None
    max_attempts: int | None = None
    reason_name: str | None = None
    reason_exit_code: int | None = None

    @classmethod
    def of(cls, report: HealthReport) -> BootOutcome:
        reason = report.reason
        return cls(
            time=report.finished,
            deployment=report.deployment,
            boot_id=report.boot_id,
            outcome=report.outcome,
            attempt=report.attempt,
            max_attempts=report.max_attempts,
            reason_name=reason.name if reason else None,
            reason_exit_code=reason.exit_code if reason else None,
        )

    def to_json(self) -> dict[str, Any]:
        reason = (
            {"name": self.reason_name, "exitCode": self.reason_exit_code}
            if self.reason_name is not None
            else None
        )
        return {
            "version": RECORDS_VERSION,
            "time": self.time,
            "deployment": self.deployment,
            "bootId": self.boot_id,
            "outcome": self.outcome.value,
            "attempt": self.attempt,
            "maxAttempts": self.max_attempts,
            "reason": reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> BootOutcome:
        reason = data.get("reason") or {}
        return cls(
            time=str(data["time"]),
            deployment=str(data["deployment"]),
            boot_id=str(data["bootId"]),
            outcome=Outcome(data["outcome"]),
            attempt=_opt_int(data.get("attempt")),
            max_attempts=_opt_int(data.get("maxAttempts")),
            reason_name=None if reason.get("name") is None else str(reason["name"]),
            reason_exit_code=_opt_int(reason.get("exitCode")),
        )


@dataclass(frozen=True)
class RollbackRecord:
    """An automatic rollback: the device gave up on *from_deployment*."""

    time: str
    from_deployment: str
    to_deployment: str
    #: The failing check of the last red boot (None: the boots never got as far
    #: as the checks, e.g. the deployment crashed every time).
    reason: FailureReason | None
    attempts_used: int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "from": self.from_deployment,
            "to": self.to_deployment,
            "attemptsUsed": self.attempts_used,
            "reason": self.reason.to_json() if self.reason else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> RollbackRecord:
        reason = data.get("reason")
        attempts = _opt_int(data["attemptsUsed"])
        return cls(
            time=str(data["time"]),
            from_deployment=str(data["from"]),
            to_deployment=str(data["to"]),
            reason=FailureReason.from_json(reason) if reason is not None else None,
            attempts_used=attempts if attempts is not None else 0,
        )


def health_dir(sysroot: Path) -> Path:
    return sysroot / HEALTH_DIR


def record_report(sysroot: Path, report: HealthReport) -> Path:
    """Keep *report* as the last one and add it to the history; returns last.json's path."""
    directory = _ensure_dir(sysroot)
    with locked_dir(directory):
        last = directory / LAST
        write_atomic(last, _dump(report.to_json()))
        lines = _read_lines(directory / HISTORY)
        lines.append(json.dumps(BootOutcome.of(report).to_json(), sort_keys=True))
        data = "".join(line + "\n" for line in lines[-HISTORY_LIMIT:])
        write_atomic(directory / HISTORY, data.encode())
    return last


def read_last_report(sysroot: Path) -> HealthReport | None:
    path = health_dir(sysroot) / LAST
    data = _load(path)
    return None if data is None else HealthReport.from_json(data, str(path))


def read_history(sysroot: Path) -> list[BootOutcome]:
    """The recorded runs, oldest first."""
    path = health_dir(sysroot) / HISTORY
    out = []
    for number, line in enumerate(_read_lines(path), start=1):
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{where}: not JSON ({exc})") from None
        check_version(data, where, "health history", RECORDS_VERSION)
        out.append(_parse(BootOutcome.from_json, data, where))
    return out


def record_rollback(sysroot: Path, rollback: RollbackRecord) -> None:
    directory = _ensure_dir(sysroot)
    with locked_dir(directory):
        path = directory / ROLLBACKS
        entries = [r.to_json() for r in _rollbacks(path)]
        entries.append(rollback.to_json())
        doc = {"version": RECORDS_VERSION, "rollbacks": entries[-ROLLBACK_LIMIT:]}
        write_atomic(path, _dump(doc))


def read_rollbacks(sysroot: Path) -> list[RollbackRecord]:
    """The recorded automatic rollbacks, oldest first."""
    return _rollbacks(health_dir(sysroot) / ROLLBACKS)


def _rollbacks(path: Path) -> list[RollbackRecord]:
    data = _load(path)
    if data is None:
        return []
    check_version(data, str(path), "rollback history", RECORDS_VERSION)
    items = data.get("rollbacks")
    if not isinstance(items, list):
        raise InvalidInputError(f"{path}: 'rollbacks' is not a list")
    return [
        _parse(RollbackRecord.from_json, item, f"{path}: rollback {i}")
        for i, item in enumerate(items, start=1)
    ]


def _parse(parse: Any, data: Any, where: str) -> Any:
    try:
        return parse(data)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"{where}: not a valid record ({exc!r})") from None


def _ensure_dir(sysroot: Path) -> Path:
    directory = health_dir(sysroot)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, str(directory)) from exc
    return directory


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"


def _load(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not JSON ({exc})") from None


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    return [line for line in text.splitlines() if line.strip()]


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number or null, got {value!r}")
    return value
