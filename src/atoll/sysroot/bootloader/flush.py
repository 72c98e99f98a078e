"""Putting the boot files where GRUB reads them: in the file system itself,
not only in its journal.

GRUB reads ext4 without replaying the journal.  After atoll writes
``grub.cfg``, ``grubenv``, kernels or boot entries, the new directory entries,
inodes and extent trees are durable once the journal has them (fsync), but the
file system's own blocks may still hold the old ones until the journal is
checkpointed: at unmount, or when the file system is remounted read-only.  A
machine that restarts without either (a kernel panic with ``panic=N``, a power
cut; systemd-shutdown itself cannot unmount the /usr its binary runs from)
boots into a GRUB that sees the old metadata, and possibly blocks that have
since been reused.

:func:`flush_filesystem` does what ostree does for ``/boot``: ``syncfs``, then
freeze and thaw the file system (``FIFREEZE``, ``FITHAW``), which writes every
dirty block and checkpoints the journal.  Freezing blocks every writer of that
file system until the thaw, so it is done only where atoll manages GRUB on a
disk of a machine the kernel booted from (:func:`should_flush`), with the
freeze and the thaw back to back, the usual termination signals held off in
between, and the thaw in a ``finally``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from pathlib import Path

from atoll.errors import from_oserror
from atoll.fsutil import syncfs
from atoll.sysroot.bootloader.bls import KARG

#: ``_IOWR('X', 119, int)`` and ``_IOWR('X', 120, int)`` from linux/fs.h.
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
CMDLINE = Path("/proc/cmdline")
_HELD_SIGNALS = frozenset(
    {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM}
)


def booted_by_atoll(cmdline: Path | None = None) -> bool:
    """Whether the running kernel was started with ``atoll=`` (a machine whose root
    file system is an atoll sysroot): never true in a container or on a build host."""
    try:
        words = (cmdline or CMDLINE).read_text().split()
    except OSError:
        return False
    for word in words:
        if word == "--":
            break
        if word.startswith(f"{KARG}="):
            return True
    return False


def should_flush(flush_setting: bool, cmdline: Path | None = None) -> bool:
    """Flush by freezing only when ``atoll.json`` asks for it (``atoll install
    to-disk`` writes it) and this machine's kernel was booted by atoll."""
    return flush_setting and booted_by_atoll(cmdline)


def flush_filesystem(path: Path) -> bool:
    """Write out the file system that holds *path* and checkpoint its journal.

    Returns True when the file system was frozen and thawed, False when it
    cannot be (no permission, not supported, frozen already by someone else);
    the ``syncfs`` before has then made everything durable in the journal at
    least."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    try:
        syncfs(fd)
        return _freeze_thaw(fd)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    finally:
        os.close(fd)


def _freeze_thaw(fd: int) -> bool:
    """FIFREEZE then FITHAW on *fd*, nothing in between but the thaw's ``finally``."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    frozen = False
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        frozen = True
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EPERM, errno.EBUSY):
            raise
    finally:
        try:
            if frozen:
                fcntl.ioctl(fd, FITHAW, 0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return frozen
