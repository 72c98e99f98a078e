"""What auto-update remembers between runs, per unit.

One JSON file, ``STATE_DIR/autoupdate.json`` (default state dir
``/var/lib/atoll/workloads``), replaced atomically on every change; a run holds
``STATE_DIR/autoupdate.lock`` (flock) from start to end::

    {"version": 1,
     "units": {
       "web.container": {
         "image": "registry.example.com/web:1.4",     the unit's Image= when last seen
         "current": {"digest": "sha256:…", "image_id": "…", "since": "2026-…Z"},
         "previous": {"digest": "sha256:…", "image_id": "…", "since": "…"} | null,
         "rolled_back": [{"digest": "sha256:…", "image_id": "…",
                          "reason": "…", "time": "2026-…Z"}],     newest last, at most 20
         "images": ["…"],                  image IDs auto-update pulled for the unit
         "last_check": "2026-…Z",
         "last_result": "true" | "false" | "failed" | "pending" | "rolled back",
         "trial": {"new": {…}, "old": {…}} | null}},     an update under way
     "registries": {"registry.example.com": "https://registry.example.com/v2/"}}

``trial`` is written before an update moves the unit's tag and removed when
the update is kept or rolled back: a run that finds one finishes that update
first (see :mod:`atoll.workloads.autoupdate.updater`).  ``registries`` holds the
``/v2/`` URL each registry's last ping chose, so that the next run's checks go
there without pinging (absent in older files).

``digest`` is the manifest digest the tag resolved to when pulled (the index's
digest for a multi-platform image, as podman records it); for the ``local``
policy, which pulls nothing, it is the image ID.  A digest in ``rolled_back`` is
never pulled again for that unit: only a tag that moves to another digest is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from atoll.errors import WorkloadUpdateStateError, from_oserror
from atoll.fsutil import write_atomic

STATE_VERSION = 1
DEFAULT_STATE_DIR = Path("/var/lib/atoll/workloads")
STATE_FILE = "autoupdate.json"
LOCK_FILE = "autoupdate.lock"
#: Rolled-back digests kept per unit (the oldest are forgotten first).
MAX_ROLLED_BACK = 20


@dataclass(frozen=True)
class ImageRecord:
    digest: str | None
    image_id: str | None
    since: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "image_id": self.image_id, "since": self.since}

    @classmethod
    def from_json(cls, data: Any) -> ImageRecord | None:
        if data is None:
            return None
        return cls(_opt_str(data, "digest"), _opt_str(data, "image_id"), str(data.get("since", "")))


@dataclass(frozen=True)
class RolledBack:
    digest: str
    image_id: str | None
    reason: str
    time: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trial:
    """An update under way: written before the tag moves, removed once the
    update is kept or rolled back.  Found at the start of a run, it means the
    last run stopped half-way (killed, a power cut) and its update is unproven."""

    new: ImageRecord
    old: ImageRecord

    def to_json(self) -> dict[str, Any]:
        return {"new": self.new.to_json(), "old": self.old.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> Trial | None:
        if data is None:
            return None
        new, old = ImageRecord.from_json(data["new"]), ImageRecord.from_json(data["old"])
        if new is None or old is None:
            raise ValueError("a trial needs its new and old image")
        return cls(new, old)


@dataclass(frozen=True)
class UnitUpdateState:
    image: str = ""
    current: ImageRecord | None = None
    previous: ImageRecord | None = None
    rolled_back: tuple[RolledBack, ...] = ()
    images: tuple[str, ...] = ()
    last_check: str = ""
    last_result: str = ""
    trial: Trial | None = None

    def rolled_back_entry(self, digest: str | None) -> RolledBack | None:
        for entry in reversed(self.rolled_back):
            if digest is not None and entry.digest == digest:
                return entry
        return None

    def with_rollback(self, entry: RolledBack) -> UnitUpdateState:
        kept = [e for e in self.rolled_back if e.digest != entry.digest]
        kept.append(entry)
        return replace(self, rolled_back=tuple(kept[-MAX_ROLLED_BACK:]))

    def with_image(self, image_id: str | None) -> UnitUpdateState:
        if image_id is None or image_id in self.images:
            return self
        return replace(self, images=(*self.images, image_id))

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "current": self.current.to_json() if self.current else None,
            "previous": self.previous.to_json() if self.previous else None,
            "rolled_back": [e.to_json() for e in self.rolled_back],
            "images": list(self.images),
            "last_check": self.last_check,
            "last_result": self.last_result,
            "trial": self.trial.to_json() if self.trial else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> UnitUpdateState:
        return cls(
            image=str(data.get("image", "")),
            current=ImageRecord.from_json(data.get("current")),
            previous=ImageRecord.from_json(data.get("previous")),
            rolled_back=tuple(
                RolledBack(
                    str(e["digest"]),
                    _opt_str(e, "image_id"),
                    str(e.get("reason", "")),
                    str(e.get("time", "")),
                )
                for e in data.get("rolled_back", [])
            ),
            images=tuple(str(i) for i in data.get("images", [])),
            last_check=str(data.get("last_check", "")),
            last_result=str(data.get("last_result", "")),
            trial=Trial.from_json(data.get("trial")),
        )


@dataclass
class WorkloadUpdateState:
    """The whole file; mutate :attr:`units` and :meth:`save`."""

    path: Path
    units: dict[str, UnitUpdateState] = field(default_factory=dict)
    #: Registry -> the ``/v2/`` URL its last ping chose (see atoll.workloads.autoupdate.checks).
    registries: dict[str, str] = field(default_factory=dict)

    def get(self, unit: str) -> UnitUpdateState:
        return self.units.get(unit) or UnitUpdateState()

    def save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "units": {name: self.units[name].to_json() for name in sorted(self.units)},
            "registries": dict(sorted(self.registries.items())),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_oserror(exc, str(self.path.parent)) from exc
        write_atomic(self.path, json.dumps(data, indent=2).encode() + b"\n")

    @classmethod
    def load(cls, state_dir: Path) -> WorkloadUpdateState:
        path = state_dir / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise from_oserror(exc, str(path)) from exc
        try:
            data = json.loads(raw)
            version = data["version"]
        except (ValueError, TypeError, KeyError):
            raise WorkloadUpdateStateError(
                f"{path}: not an auto-update state file (malformed JSON)",
                hint="move it aside; the next run starts afresh (and forgets rolled-back digests)",
            ) from None
        if not isinstance(version, int) or version > STATE_VERSION:
            raise WorkloadUpdateStateError(
                f"{path}: written by a newer atoll (state version {version!r}, "
                f"this one reads {STATE_VERSION})",
                hint="upgrade atoll, or use another --state-dir",
            )
        try:
            units = {str(k): UnitUpdateState.from_json(v) for k, v in data["units"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise WorkloadUpdateStateError(
                f"{path}: malformed unit entry ({type(exc).__name__}: {exc})",
                hint="move it aside; the next run starts afresh",
            ) from None
        registries = data.get("registries")
        if not isinstance(registries, dict):
            registries = {}  # older files have none; a bad one only costs a ping
        known = {str(k): v for k, v in registries.items() if isinstance(v, str)}
        return cls(path, units, known)


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """One auto-update run at a time per state directory."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise from_oserror(exc, str(state_dir / LOCK_FILE)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _opt_str(data: Any, key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)
