"""Choosing the disk an unattended install writes: the disks the kernel lists
in ``/sys/block``, less the installer's own medium, that match every rule of
the install config's ``[disk]`` table.  None or more than one is refused
(:class:`InstallTargetError`): the installer never guesses.

What is read, for each ``/sys/block/NAME``: ``size`` (512-byte sectors),
``device/model``, ``ro`` and ``removable``; ``dev`` (MAJOR:MINOR) and the same
of its partitions, to leave out the disk the installer runs from.  Loop, RAM,
zram, device-mapper and optical (``sr``) devices are never candidates.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import InstallTargetError
from atoll.install.config import DiskRules

SYS_BLOCK = Path("/sys/block")
_SKIPPED = ("loop", "ram", "zram", "dm-", "sr", "md", "nbd")


@dataclass(frozen=True)
class Disk:
    path: Path
    size: int
    model: str
    #: MAJOR:MINOR of the disk and of each of its partitions.
    devices: frozenset[str]

    def describe(self) -> str:
        model = f" {self.model!r}" if self.model else ""
        return f"{self.path} ({self.size} bytes{model})"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def list_disks(sys_block: Path = SYS_BLOCK, dev: Path = Path("/dev")) -> list[Disk]:
    """The whole disks the kernel knows, writable ones only, by name."""
    disks = []
    for entry in sorted(sys_block.iterdir()) if sys_block.is_dir() else []:
        if entry.name.startswith(_SKIPPED) or _read(entry / "ro") == "1":
            continue
        sectors = _read(entry / "size")
        if not sectors.isdigit() or int(sectors) == 0:
            continue
        devices = {_read(entry / "dev")}
        devices |= {_read(p / "dev") for p in entry.iterdir() if (p / "partition").exists()}
        disks.append(
            Disk(
                path=dev / entry.name,
                size=int(sectors) * 512,
                model=_read(entry / "device" / "model"),
                devices=frozenset(d for d in devices if d),
            )
        )
    return disks


def device_of(path: Path) -> str:
    """MAJOR:MINOR of the file system holding *path* ("" if it cannot be told)."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def matches(disk: Disk, rules: DiskRules) -> bool:
    if rules.path is not None and os.path.realpath(rules.path) != str(disk.path):
        return False
    if rules.model is not None and not fnmatch.fnmatch(disk.model, rules.model):
        return False
    if rules.min_size is not None and disk.size < rules.min_size:
        return False
    return rules.max_size is None or disk.size <= rules.max_size


def choose_disk(rules: DiskRules, disks: list[Disk], *, exclude: str = "") -> Disk:
    """The one disk of *disks* that *rules* match, leaving out the one holding
    the device *exclude* (MAJOR:MINOR: the installer's medium)."""
    candidates = [d for d in disks if exclude not in d.devices]
    found = [d for d in candidates if matches(d, rules)]
    if not found:
        seen = "; ".join(d.describe() for d in candidates) or "none"
        raise InstallTargetError(
            f"no disk matches the install config ({rules.describe()}); disks seen: {seen}",
            hint="attach the disk, or change [disk] in the install config (atoll iso customize)",
        )
    if len(found) > 1:
        raise InstallTargetError(
            f"{len(found)} disks match the install config ({rules.describe()}): "
            f"{', '.join(d.describe() for d in found)}; the installer does not guess",
            hint="narrow [disk] in the install config (path, model, min-size, max-size)",
        )
    return found[0]
