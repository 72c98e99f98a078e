"""What automatic updates remember between runs: ``SYSROOT/atoll/updates/state.json``.

Format (version :data:`STATE_VERSION`; times are UTC, ISO 8601 with ``Z``)::

    {
      "version": 1,
      "lastRun": "2026-03-01T02:17:00Z",       # null before the first run
      "lastAction": "staged",                   # what that run did (run.Outcome)
      "lastCheck": {                            # the last look at the registry
        "time": "2026-03-01T02:17:00Z",
        "available": true,                      # an update was there
        "digest": "sha256:…", "version": "2.0"  # of what was found (null: nothing new)
      },
      "lastError": {"time": "…", "message": "…", "exitCode": 22},   # null after a success
      "failures": 0,                            # failed runs in a row (for the backoff)
      "stagedAt": "…", "stagedDigest": "sha256:…",   # last staged by automatic updates
      "appliedAt": "…"                          # last reboot requested into an update
    }

The file is only a memory: deleting it loses the history and nothing else.
Written atomically (temporary name, fsync, rename); one ``atoll updates run``
at a time holds ``atoll/updates/lock`` (flock) while it works.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from atoll.errors import InvalidInputError, LockedError, SysrootVersionError, from_oserror
from atoll.fsutil import write_atomic
from atoll.timeutil import utc_timestamp

STATE_VERSION = 1
#: The first retry after a failed run waits this long; each further failure doubles it.
BACKOFF_BASE = datetime.timedelta(minutes=15)
BACKOFF_MAX = datetime.timedelta(hours=6)


def state_dir(sysroot: Path) -> Path:
    return sysroot / "atoll" / "updates"


def state_path(sysroot: Path) -> Path:
    return state_dir(sysroot) / "state.json"


def _time(value: Any, where: str) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInputError(f"{where}: {value!r} is not a time") from None
    if parsed.tzinfo is None:
        raise InvalidInputError(f"{where}: {value!r} has no time zone")
    return parsed


@dataclass(frozen=True)
class CheckRecord:
    time: datetime.datetime
    available: bool
    digest: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "time": utc_timestamp(self.time, digits=None),
            "available": self.available,
            "digest": self.digest,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> CheckRecord:
        when = _time(data.get("time"), f"{where}.time")
        if when is None:
            raise InvalidInputError(f"{where}: no time")
        return cls(when, bool(data.get("available")), data.get("digest"), data.get("version"))


@dataclass(frozen=True)
class ErrorRecord:
    time: datetime.datetime
    message: str
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": utc_timestamp(self.time, digits=None),
            "message": self.message,
            "exitCode": self.exit_code,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> ErrorRecord:
        when = _time(data.get("time"), f"{where}.time")
        if when is None:
            raise InvalidInputError(f"{where}: no time")
        return cls(when, str(data.get("message", "")), int(data.get("exitCode", 1)))


@dataclass(frozen=True)
class UpdateState:
    last_run: datetime.datetime | None = None
    last_action: str | None = None
    last_check: CheckRecord | None = None
    last_error: ErrorRecord | None = None
    failures: int = 0
    staged_at: datetime.datetime | None = None
    staged_digest: str | None = None
    applied_at: datetime.datetime | None = None

    # --- the backoff after failures -----------------------------------------------------

    def retry_at(self) -> datetime.datetime | None:
        """When a run may try again after failures in a row (None: no failure)."""
        if self.last_error is None or self.failures < 1:
            return None
        wait = min(BACKOFF_MAX, BACKOFF_BASE * (1 << min(self.failures - 1, 16)))
        return self.last_error.time.astimezone(datetime.UTC) + wait

    # --- what a run changes -------------------------------------------------------------

    def succeeded(self, when: datetime.datetime, action: str, **changes: Any) -> UpdateState:
        return replace(
            self,
            last_run=when,
            last_action=action,
            last_error=None,
            failures=0,
            **changes,
        )

    def failed(self, when: datetime.datetime, action: str, message: str, code: int) -> UpdateState:
        return replace(
            self,
            last_run=when,
            last_action=action,
            last_error=ErrorRecord(when, message, code),
            failures=self.failures + 1,
        )

    # --- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def text(when: datetime.datetime | None) -> str | None:
            return utc_timestamp(when, digits=None) if when else None

        return {
            "version": STATE_VERSION,
            "lastRun": text(self.last_run),
            "lastAction": self.last_action,
            "lastCheck": self.last_check.to_json() if self.last_check else None,
            "lastError": self.last_error.to_json() if self.last_error else None,
            "failures": self.failures,
            "stagedAt": text(self.staged_at),
            "stagedDigest": self.staged_digest,
            "appliedAt": text(self.applied_at),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "updates state") -> UpdateState:
        if not isinstance(data, dict):
            raise InvalidInputError(f"{where}: not a JSON object")
        version = data.get("version", STATE_VERSION)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise SysrootVersionError(
                f"{where}: format {version} is newer than this atoll understands ({STATE_VERSION})",
                hint="use a newer atoll, or delete the file (it only holds history)",
            )
        check = data.get("lastCheck")
        error = data.get("lastError")
        try:
            return cls(
                last_run=_time(data.get("lastRun"), f"{where}: lastRun"),
                last_action=data.get("lastAction"),
                last_check=CheckRecord.from_json(check, f"{where}: lastCheck") if check else None,
                last_error=ErrorRecord.from_json(error, f"{where}: lastError") if error else None,
                failures=int(data.get("failures", 0)),
                staged_at=_time(data.get("stagedAt"), f"{where}: stagedAt"),
                staged_digest=data.get("stagedDigest"),
                applied_at=_time(data.get("appliedAt"), f"{where}: appliedAt"),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: malformed ({exc})") from None

    @classmethod
    def load(cls, path: Path) -> UpdateState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise InvalidInputError(
                f"{path}: not valid JSON ({exc})",
                hint="delete the file: it only holds the history of automatic updates",
            ) from None
        except OSError as exc:
            raise from_oserror(exc, str(path)) from None
        try:
            return cls.from_json(data, str(path))
        except InvalidInputError as exc:
            raise InvalidInputError(
                exc.message,
                hint="delete the file: it only holds the history of automatic updates",
            ) from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_json(), indent=2).encode() + b"\n"
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise from_oserror(exc, str(path)) from None


@contextlib.contextmanager
def updates_lock(sysroot: Path) -> Iterator[None]:
    """One ``atoll updates run`` at a time on a sysroot; fail at once if another runs."""
    directory = state_dir(sysroot)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise from_oserror(exc, str(directory / "lock")) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{sysroot}: another atoll updates run is working on this sysroot",
                hint="wait for it to finish (systemctl status atoll-fetch-apply-updates)",
            ) from None
        yield
    finally:
        os.close(fd)
