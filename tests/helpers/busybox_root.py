"""Small systems to run health checks in: busybox in a directory tree (tests/health).

``/bin/busybox`` (Debian's busybox-static) is copied to ``ROOT/usr/bin/busybox``
with a symlink per applet, ``ROOT/bin -> usr/bin``, so ``#!/bin/sh`` scripts run
inside a chroot of ROOT.  Running in a chroot needs root.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh",
    "cat",
    "echo",
    "env",
    "ls",
    "mkdir",
    "printf",
    "seq",
    "sleep",
    "test",
    "touch",
)
REQUIRED = "usr/lib/greenboot/check/required.d"
WANTED = "usr/lib/greenboot/check/wanted.d"
GREEN = "usr/lib/greenboot/green.d"
RED = "usr/lib/greenboot/red.d"
ETC_REQUIRED = "etc/greenboot/check/required.d"
ETC_WANTED = "etc/greenboot/check/wanted.d"
ETC_GREEN = "etc/greenboot/green.d"
ETC_RED = "etc/greenboot/red.d"


@dataclass(frozen=True)
class BusyboxRoot:
    path: Path

    def script(
        self, directory: str, name: str, body: str, *, mode: int = 0o755, shebang: bool = True
    ) -> Path:
        """A script in *directory* (relative to the root): ``#!/bin/sh`` and *body*."""
        target = self.path / directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        text = "#!/bin/sh\n" + body if shebang else body
        target.write_text(text)
        target.chmod(mode)
        return target

    def conf(self, text: str) -> Path:
        target = self.path / "etc/greenboot/greenboot.conf"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def read(self, inside: str) -> str:
        return (self.path / inside.lstrip("/")).read_text()

    def exists(self, inside: str) -> bool:
        return (self.path / inside.lstrip("/")).exists()


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing part is a failure)")
    pytest.skip(reason)


def make_root(path: Path) -> BusyboxRoot:
    if not BUSYBOX.is_file():
        missing("needs /bin/busybox (apt-get install busybox-static)")
    bindir = path / "usr" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    for applet in APPLETS:
        (bindir / applet).symlink_to("busybox")
    (path / "bin").symlink_to("usr/bin")
    for name in ("dev", "proc", "run", "tmp", "var", "etc"):
        (path / name).mkdir()
    return BusyboxRoot(path)


def process_gone(pid: int) -> bool:
    """True when *pid* has exited (a zombie that nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def busybox_files(checks: dict[str, str]) -> dict[str, object]:
    """Files for an image (tests/helpers/osimage.py specs): busybox as /bin/sh and
    friends, and a ``#!/bin/sh`` script for each path in *checks*."""
    from helpers.osimage import FileSpec

    files: dict[str, object] = {
        "usr/bin/busybox": FileSpec(BUSYBOX.read_bytes(), 0o755),
        "bin": FileSpec(symlink="usr/bin"),
        "proc": FileSpec(directory=True),
        "dev": FileSpec(directory=True),
        "var/lib/health/.keep": "",
    }
    for applet in ("sh", "touch", "echo", "test", "cat", "mkdir", "["):
        files[f"usr/bin/{applet}"] = FileSpec(symlink="busybox")
    for path, body in checks.items():
        files[path] = FileSpec(f"#!/bin/sh\n{body}".encode(), 0o755)
    return files
