"""Helpers for automatic-update tests: a device that records what it is asked to do,
and a running system's root with an updates.toml."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from atoll.errors import AtollError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageTransport
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.origin import Deployment, Origin

UTC = datetime.UTC
OLD_DIGEST = "sha256:" + "1" * 64
NEW_DIGEST = "sha256:" + "2" * 64


def deployment(digest: str, version: str, *, serial: int = 0, download_only: bool = False) -> Any:
    origin = Origin(
        image="registry.example/os/edge:stable",
        transport=ImageTransport.REGISTRY,
        manifest_digest=digest,
        image_version=version,
        download_only=download_only,
    )
    return Deployment("default", digest[7:], serial, origin)


@dataclass
class FakeDevice:
    """Plays :class:`atoll.sysroot.lifecycle.Device` for ``run_automatic_update``.

    The registry holds *available* (a newer image) or nothing new; ``calls``
    records check/stage/finalize in order; ``ctx_during`` the context each
    registry operation ran with."""

    root: Path
    available: bool = True
    staged: Any = None
    fail_with: AtollError | None = None
    calls: list[str] = field(default_factory=list)
    ctx_during: list[SystemContext] = field(default_factory=list)
    ctx: SystemContext = field(default_factory=SystemContext)

    def __post_init__(self) -> None:
        self.sysroot = Sysroot(self.root)
        self.sysroot.create()
        self.current = deployment(OLD_DIGEST, "1.0")

    def state(self) -> Any:
        return SimpleNamespace(staged=self.staged, current=self.current)

    def _image(self) -> Any:
        if self.available:
            return SimpleNamespace(digest=NEW_DIGEST, version="2.0", name="os/edge:stable")
        return SimpleNamespace(digest=OLD_DIGEST, version="1.0", name="os/edge:stable")

    def check(self, name: Any = None) -> tuple[Any, Any, bool]:
        self.calls.append("check")
        self.ctx_during.append(self.ctx)
        if self.fail_with is not None:
            raise self.fail_with
        return self.current, self._image(), self.available

    def stage(self, name: Any = None, *, allow_rolled_back: bool = False) -> Any:
        self.calls.append("stage")
        self.ctx_during.append(self.ctx)
        if self.fail_with is not None:
            raise self.fail_with
        image = self._image()
        if not self.available:
            return SimpleNamespace(deployment=None, image=image, changed=False, rolled_back=None)
        if self.staged is not None and self.staged.origin.manifest_digest == NEW_DIGEST:
            return SimpleNamespace(deployment=None, image=image, changed=False, rolled_back=None)
        self.staged = deployment(NEW_DIGEST, "2.0")
        return SimpleNamespace(deployment=self.staged, image=image, changed=True, rolled_back=None)

    def finalize(self) -> Any:
        self.calls.append("finalize")
        staged, self.staged = self.staged, None
        if staged is not None:
            self.current = staged
        return staged


def write_config(root: Path, text: str) -> Path:
    """Write ROOT/etc/atoll/updates.toml (and a machine-id) and return the path."""
    path = root / "etc" / "atoll" / "updates.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    machine_id = root / "etc" / "machine-id"
    if not machine_id.exists():
        machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    return path


class RebootRecorder:
    """The reboot callable: counts calls and can check what was on disk at that moment."""

    def __init__(self, check: Any = None) -> None:
        self.count = 0
        self._check = check

    def __call__(self) -> None:
        self.count += 1
        if self._check is not None:
            self._check()
