"""The sysroot: everything a device keeps on its disk, in one directory.

On a real machine the sysroot is the physical root file system, mounted at
``/sysroot`` once early boot has made a deployment ``/``.  Tests and the
directory device use any directory.  Layout (version :data:`SYSROOT_VERSION`)::

    SYSROOT/
    ├── atoll/
    │   ├── sysroot.json                 {"version": 1}; a newer version is refused
    │   ├── lock                         flock: one lifecycle operation at a time
    │   ├── store/                       the object store (atoll.store)
    │   ├── staged.json                  the staged deployment, until finalize (absent: none)
    │   ├── dropped.json                 the last staged update finalize dropped, and why
    │   ├── last-transfer.json           what the last import moved, by path (atoll.store.partial)
    │   ├── run/booted.json              which deployment this boot runs (the device's /run)
    │   └── deploy/STATEROOT/
    │       ├── var/                     the stateroot's /var: shared, never rolled back
    │       └── deploy/
    │           ├── COMMIT.SERIAL/       a deployment: the image's files, /etc merged
    │           └── COMMIT.SERIAL.origin where it came from (JSON, see origin.py)
    └── boot/                            boot entries and kernels (atoll.sysroot.bootloader.entries)

Lock order: the sysroot lock (``atoll/lock``), then the store lock, then the
boot lock.  Every lifecycle command takes the sysroot lock for its whole run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import InvalidInputError, LockedError, NotFoundError, SysrootVersionError
from atoll.fsutil import write_atomic

SYSROOT_VERSION = 1
DEFAULT_STATEROOT = "default"


@dataclass(frozen=True)
class Sysroot:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "atoll"

    @property
    def store_path(self) -> Path:
        return self.meta / "store"

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def staged_file(self) -> Path:
        return self.meta / "staged.json"

    @property
    def transfer_file(self) -> Path:
        return self.meta / "last-transfer.json"

    @property
    def booted_file(self) -> Path:
        return self.meta / "run" / "booted.json"

    def stateroot(self, name: str) -> Path:
        return self.meta / "deploy" / name

    def var(self, stateroot: str) -> Path:
        return self.stateroot(stateroot) / "var"

    def deploy_dir(self, stateroot: str) -> Path:
        return self.stateroot(stateroot) / "deploy"

    def stateroots(self) -> list[str]:
        base = self.meta / "deploy"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    # --- creation and checks --------------------------------------------------------

    def exists(self) -> bool:
        return (self.meta / "sysroot.json").is_file()

    def create(self) -> None:
        """Make the layout in an empty (or not yet existing) directory."""
        if self.exists():
            self.check_version()
            return
        if self.root.exists() and any(p.name != "lost+found" for p in self.root.iterdir()):
            raise InvalidInputError(
                f"{self.root}: not empty and not an atoll sysroot",
                hint="install into an empty file system or directory",
            )
        for path in (self.meta / "run", self.meta / "deploy", self.boot):
            path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.meta / "sysroot.json", json.dumps({"version": SYSROOT_VERSION}).encode())

    def check_version(self) -> None:
        path = self.meta / "sysroot.json"
        try:
            data = json.loads(path.read_text())
            version = int(data["version"])
        except FileNotFoundError:
            raise NotFoundError(
                f"{self.root}: not an atoll sysroot (no atoll/sysroot.json)",
                hint="install one with: atoll install to-filesystem ROOT --source IMAGE",
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}: unreadable sysroot metadata ({exc})") from None
        if version > SYSROOT_VERSION:
            raise SysrootVersionError(
                f"{self.root}: sysroot format {version} is newer than this atoll "
                f"understands ({SYSROOT_VERSION})",
                hint="use the atoll of the image that wrote it, or a newer atoll",
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sysroot lock; fail at once if another atoll holds it."""
        self.check_version()
        fd = os.open(self.meta / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(
                    f"{self.root}: another atoll command is changing this sysroot",
                    hint="wait for it to finish and try again",
                ) from None
            yield
        finally:
            os.close(fd)
