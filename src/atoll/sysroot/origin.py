"""Deployments and their origin files: where each deployment came from.

``deploy/STATEROOT/deploy/COMMIT.SERIAL.origin`` (JSON, version :data:`ORIGIN_VERSION`)::

    {"version": 1,
     "image": "registry.example.com/os/edge:1.4",   # as the user named it, without transport
     "transport": "registry",                       # registry, oci, oci-archive, dir, …
     "manifestDigest": "sha256:…",                  # what was deployed
     "imageVersion": "1.4" | null,                  # org.opencontainers.image.version
     "timestamp": "2026-01-01T00:00:00Z" | null,    # the image config's "created"
     "signaturePolicy": "insecureAcceptAnything",   # the policy that admitted the image
     "pinned": false,                               # kept by cleanup and upgrades
     "downloadOnly": false,                         # staged, but not applied at shutdown
     "deployedAt": "…",                             # when atoll made the deployment
     "etcStrategy": "keep-local",                   # how finalize merges /etc (--etc-merge)
     "etcMerge": null | {...}}                      # conflicts and changes of the last /etc merge

The same document (plus ``stateroot``, ``commit`` and ``serial``) is written to
``atoll/staged.json`` while a deployment waits for finalization.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from atoll.errors import InvalidInputError, SysrootVersionError
from atoll.fsutil import write_atomic
from atoll.oci.transports import ImageName, ImageTransport, parse_bootc_name

ORIGIN_VERSION = 1
_ID_RE = re.compile(r"^([0-9a-f]{64})\.(\d+)$")


@dataclass(frozen=True)
class Origin:
    image: str
    transport: ImageTransport
    manifest_digest: str
    image_version: str | None = None
    timestamp: str | None = None
    signature_policy: str = "insecureAcceptAnything"
    pinned: bool = False
    download_only: bool = False
    deployed_at: str | None = None
    #: How finalize merges /etc into this deployment (fail, keep-local, keep-new).
    etc_strategy: str = "keep-local"
    etc_merge: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def image_name(self) -> ImageName:
        return parse_bootc_name(self.image, self.transport)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": ORIGIN_VERSION,
            "image": self.image,
            "transport": self.transport.value,
            "manifestDigest": self.manifest_digest,
            "imageVersion": self.image_version,
            "timestamp": self.timestamp,
            "signaturePolicy": self.signature_policy,
            "pinned": self.pinned,
            "downloadOnly": self.download_only,
            "deployedAt": self.deployed_at,
            "etcStrategy": self.etc_strategy,
            "etcMerge": self.etc_merge,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Origin:
        if not isinstance(data, dict):
            raise InvalidInputError(f"{where}: not a JSON object")
        version = data.get("version", 1)
        if not isinstance(version, int) or version > ORIGIN_VERSION:
            raise SysrootVersionError(f"{where}: origin format {version} is newer than atoll's")
        try:
            return cls(
                image=str(data["image"]),
                transport=ImageTransport(data["transport"]),
                manifest_digest=str(data["manifestDigest"]),
                image_version=data.get("imageVersion"),
                timestamp=data.get("timestamp"),
                signature_policy=str(data.get("signaturePolicy", "insecureAcceptAnything")),
                pinned=bool(data.get("pinned", False)),
                download_only=bool(data.get("downloadOnly", False)),
                deployed_at=data.get("deployedAt"),
                etc_strategy=str(data.get("etcStrategy", "keep-local")),
                etc_merge=data.get("etcMerge"),
            )
        except (KeyError, ValueError) as exc:
            raise InvalidInputError(f"{where}: bad origin ({exc})") from None


@dataclass(frozen=True)
class Deployment:
    stateroot: str
    commit: str
    serial: int
    origin: Origin

    @property
    def id(self) -> str:
        return f"{self.commit}.{self.serial}"

    @property
    def short(self) -> str:
        return f"{self.commit[:12]}.{self.serial}"

    def path(self, deploy_dir: Path) -> Path:
        return deploy_dir / self.id

    def with_origin(self, **changes: Any) -> Deployment:
        return replace(self, origin=replace(self.origin, **changes))

    def to_json(self) -> dict[str, Any]:
        return {
            **self.origin.to_json(),
            "stateroot": self.stateroot,
            "commit": self.commit,
            "serial": self.serial,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Deployment:
        origin = Origin.from_json(data, where)
        try:
            return cls(str(data["stateroot"]), str(data["commit"]), int(data["serial"]), origin)
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"{where}: bad deployment record ({exc})") from None


def parse_deployment_id(text: str) -> tuple[str, int] | None:
    match = _ID_RE.match(text)
    return (match.group(1), int(match.group(2))) if match else None


def read_origin(path: Path) -> Origin:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: missing origin file") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: unreadable origin ({exc})") from None
    return Origin.from_json(data, str(path))


def write_origin(path: Path, origin: Origin) -> None:
    write_atomic(path, json.dumps(origin.to_json(), indent=2).encode() + b"\n")


def origin_for(name: ImageName, manifest_digest: str, **extra: Any) -> Origin:
    """The origin of an image fetched as *name*."""
    return Origin(
        image=name.details,
        transport=name.bootc_transport,
        manifest_digest=manifest_digest,
        **extra,
    )
