"""A staged update that could not be finalized, and why.

When finalization fails before the new boot entries are written, the staged
deployment is dropped and the previous entries stay and boot, as ostree does
with a staged deployment it cannot finalize.  What was dropped and why is kept
in ``SYSROOT/atoll/dropped.json`` (format version :data:`DROPPED_VERSION`) for
``atoll status``, until an update is finalized::

    {"formatVersion": 1, "stateroot": "default", "deployment": "COMMIT.SERIAL",
     "image": "quay.io/…", "version": "2.0" | null,
     "imageDigest": "sha256:…", "time": "2026-…Z",
     "error": "one-line message", "exitCode": 34}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from atoll.errors import AtollError
from atoll.fsutil import write_atomic
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.origin import Deployment

DROPPED_VERSION = 1
_FILE = "dropped.json"


@dataclass(frozen=True)
class DroppedUpdate:
    stateroot: str
    deployment: str
    image: str
    version: str | None
    image_digest: str
    time: str
    error: str
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {_KEYS.get(k, k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any) -> DroppedUpdate:
        values = {f.name: data[_KEYS.get(f.name, f.name)] for f in dataclasses.fields(cls)}
        strings = [v for k, v in values.items() if k not in ("version", "exit_code")]
        if not all(isinstance(v, str) for v in strings) or not isinstance(values["exit_code"], int):
            raise ValueError("a field has the wrong type")
        if values["version"] is not None and not isinstance(values["version"], str):
            raise ValueError("version is not a string")
        return cls(**values)


#: JSON names of the fields that are not the same in Python.
_KEYS = {"image_digest": "imageDigest", "exit_code": "exitCode"}


def record_dropped(sysroot: Sysroot, deployment: Deployment, exc: BaseException, time: str) -> None:
    code = exc.exit_code if isinstance(exc, AtollError) else 1
    dropped = DroppedUpdate(
        deployment.stateroot,
        deployment.id,
        deployment.origin.image,
        deployment.origin.image_version,
        deployment.origin.manifest_digest,
        time,
        " ".join(str(exc).split()) or type(exc).__name__,
        code,
    )
    doc = {"formatVersion": DROPPED_VERSION, **dropped.to_json()}
    write_atomic(sysroot.meta / _FILE, json.dumps(doc, indent=2).encode())


def read_dropped(sysroot: Sysroot) -> DroppedUpdate | None:
    """The last dropped update; None when there is none or the record is unreadable
    (it is only informative)."""
    try:
        data = json.loads((sysroot.meta / _FILE).read_text())
        if int(data.get("formatVersion", 0)) > DROPPED_VERSION:
            return None
        return DroppedUpdate.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def clear_dropped(sysroot: Sysroot) -> None:
    (sysroot.meta / _FILE).unlink(missing_ok=True)
