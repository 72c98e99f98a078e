"""OS images this device rolled back from, which updates do not stage again.

When the bootloader gives up on a deployment (its boot attempts are used up,
see :mod:`atoll.health.assess`), the manifest digest of its image is kept here.
``atoll upgrade``, ``atoll switch`` and ``atoll updates run`` skip a digest on
this list, so a red image cannot loop a device through red boots; a newer
digest on the same tag is taken as usual.  ``--allow-rolled-back`` takes such
an image anyway, ``atoll updates forget DIGEST`` removes it from the list, and
a green boot of it removes it too.

``SYSROOT/atoll/rolled-back.json`` (format version :data:`ROLLED_BACK_VERSION`),
replaced atomically on every change, newest last, at most :data:`LIMIT`::

    {"formatVersion": 1,
     "images": [{"imageDigest": "sha256:…", "image": "quay.io/…",
                 "version": "2.0" | null, "deployment": "COMMIT.SERIAL",
                 "time": "2026-…Z", "attemptsUsed": 3,
                 "reason": "required check 50-x.sh failed (exit code 3)"}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from atoll.errors import InvalidInputError, NotFoundError, SysrootVersionError, from_oserror
from atoll.fsutil import write_atomic
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.origin import Deployment

ROLLED_BACK_VERSION = 1
LIMIT = 20
_FILE = "rolled-back.json"
#: The reason written when the boots never got as far as the health checks.
NO_CHECKS_REASON = "its boots never reached the health checks"


@dataclass(frozen=True)
class RolledBackImage:
    image_digest: str
    image: str
    version: str | None
    deployment: str
    time: str
    attempts_used: int
    reason: str

    def describe(self) -> str:
        """``quay.io/os:stable 2.0 (sha256:0123456789ab) was rolled back on T: REASON``."""
        version = f" {self.version}" if self.version else ""
        return (
            f"{self.image}{version} ({self.image_digest[:19]}) was rolled back on this "
            f"device on {self.time} after {self.attempts_used} boot attempts: {self.reason}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "imageDigest": self.image_digest,
            "image": self.image,
            "version": self.version,
            "deployment": self.deployment,
            "time": self.time,
            "attemptsUsed": self.attempts_used,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> RolledBackImage:
        version = data["version"]
        attempts = data["attemptsUsed"]
        if version is not None and not isinstance(version, str):
            raise ValueError("version is not a string")
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ValueError("attemptsUsed is not a whole number")
        digest, image, deployment, time, reason = (
            data[k] for k in ("imageDigest", "image", "deployment", "time", "reason")
        )
        if not all(isinstance(s, str) for s in (digest, image, deployment, time, reason)):
            raise ValueError("a field is not a string")
        return cls(digest, image, version, deployment, time, attempts, reason)


def read_rolled_back(sysroot: Sysroot) -> list[RolledBackImage]:
    """The images rolled back from, oldest first.  A file that cannot be read
    is an error: skipping nothing because of it could start a boot loop."""
    path = sysroot.meta / _FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not JSON ({exc})") from None
    try:
        version = data["formatVersion"]
        if isinstance(version, int) and version > ROLLED_BACK_VERSION:
            raise SysrootVersionError(
                f"{path}: written by a newer atoll (format {version}, "
                f"this one reads {ROLLED_BACK_VERSION})",
                hint="upgrade atoll",
            )
        return [RolledBackImage.from_json(item) for item in data["images"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(
            f"{path}: not a valid list of rolled-back images ({exc!r})",
            hint="move it aside; updates then forget which images were rolled back",
        ) from None


def find_rolled_back(sysroot: Sysroot, digest: str) -> RolledBackImage | None:
    """The record of *digest* when this device rolled back from it."""
    for entry in reversed(read_rolled_back(sysroot)):
        if entry.image_digest == digest:
            return entry
    return None


def record_rolled_back(
    sysroot: Sysroot, failed: Deployment, time: str, attempts: int, reason: str | None
) -> RolledBackImage:
    origin = failed.origin
    entry = RolledBackImage(
        origin.manifest_digest,
        origin.image,
        origin.image_version,
        failed.id,
        time,
        attempts,
        reason or NO_CHECKS_REASON,
    )
    kept = [e for e in read_rolled_back(sysroot) if e.image_digest != entry.image_digest]
    _write(sysroot, [*kept, entry][-LIMIT:])
    return entry


def forget_rolled_back(sysroot: Sysroot, digest: str) -> RolledBackImage:
    """Let updates take *digest* (a full digest or a unique prefix) again."""
    entries = read_rolled_back(sysroot)
    wanted = digest if ":" in digest else f"sha256:{digest}"
    matches = [e for e in entries if e.image_digest.startswith(wanted)]
    if len({e.image_digest for e in matches}) != 1:
        known = ", ".join(e.image_digest[:19] for e in entries) or "none"
        raise NotFoundError(
            f"{digest}: no single rolled-back image on this device has that digest "
            f"(rolled back: {known})",
            hint="see atoll updates status",
        )
    found = matches[0]
    _write(sysroot, [e for e in entries if e.image_digest != found.image_digest])
    return found


def forget_if_rolled_back(sysroot: Sysroot, digest: str) -> None:
    """A green boot of *digest* shows it is good after all."""
    entries = read_rolled_back(sysroot)
    kept = [e for e in entries if e.image_digest != digest]
    if kept != entries:
        _write(sysroot, kept)


def _write(sysroot: Sysroot, entries: list[RolledBackImage]) -> None:
    doc = {"formatVersion": ROLLED_BACK_VERSION, "images": [e.to_json() for e in entries]}
    write_atomic(sysroot.meta / _FILE, json.dumps(doc, indent=2).encode() + b"\n")
