"""A cgroup of its own for each container-boot device.

systemd-nspawn runs with ``--keep-unit`` (no systemd needed on the host): it
takes the cgroup it was started in and makes ``payload`` (the container's root
cgroup, where the device's systemd builds its own tree) and ``supervisor``
below it. Two devices started from the same cgroup would share one
``payload``: each device's systemd would see the other's processes in its own
units (``web.service`` of dev2 holding dev1's container), wait for them to go
and kill them. So each boot gets a cgroup of its own on the unified hierarchy,
below the caller's::

    CGROUP2/CALLER/
    └── atoll-MACHINE-PID/       made here, nspawn started in it, removed after
                                 (or by a later boot's start or end, if PID was killed)
        ├── supervisor/          systemd-nspawn itself
        └── payload/             the device: init.scope, system.slice/…

Where there is no writable unified hierarchy (or the caller's cgroup cannot be
found) nspawn is started where the caller is, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def unified_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted with its root at ``/``, or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        sep = fields.index("-") if "-" in fields else -1
        if sep > 0 and fields[sep + 1] == "cgroup2" and fields[3] == "/":
            return Path(fields[4].replace("\\040", " "))
    return None


def own_cgroup() -> str | None:
    """This process's cgroup on the unified hierarchy (``/`` for the root), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


@contextlib.contextmanager
def cgroup_of_its_own(machine: str) -> Iterator[Callable[[], object] | None]:
    """A fresh cgroup for one boot of *machine*: yields the function a child
    runs before exec to move itself there (None where that cannot be had), and
    removes the cgroup, with what the device left below it, at the end."""
    mount, own = unified_mount(), own_cgroup()
    if mount is None or own is None:
        yield None
        return
    parent = mount / own.lstrip("/")
    _remove_stale(parent)
    path = parent / f"atoll-{machine}-{os.getpid()}"
    try:
        path.mkdir()
        fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("boot: no cgroup of its own for %s (%s): nspawn shares ours", machine, exc)
        with contextlib.suppress(OSError):
            path.rmdir()
        yield None
        return

    def enter() -> None:
        # In the child between fork and exec: "0" moves the writing process.
        os.write(fd, b"0")

    try:
        yield enter
    finally:
        os.close(fd)
        _remove(path)
        # A killed boot's cgroup may still have held its dying container when the
        # next boot started: it is empty by now.
        _remove_stale(path.parent)


def _remove_stale(parent: Path) -> None:
    """Remove the cgroups of boots whose process is gone without removing its own
    (killed: a power cut in the demo); a cgroup something still runs in stays."""
    with contextlib.suppress(OSError):
        for path in parent.glob("atoll-*-*"):
            pid = path.name.rpartition("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _remove(path)


def _remove(path: Path) -> None:
    """Remove *path* and its child cgroups, deepest first (each must be empty)."""
    for top, dirs, _files in os.walk(path, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                (Path(top) / name).rmdir()
    try:
        path.rmdir()
    except OSError as exc:
        log.debug("boot: cannot remove %s: %s", path, exc)
