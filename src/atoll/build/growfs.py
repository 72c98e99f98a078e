"""First boot grows the root partition and its file system to the disk.

A disk image is made as small as asked (``--size``); written to a bigger disk
(a 4 GiB image on a 64 GiB card, a cloud volume bigger than the image) it
leaves the rest unused.  ``atoll install to-disk`` and ``atoll disk-image``
write two files into the installed deployment's ``/etc`` (carried over to
every later deployment by the /etc merge, as any local file there)::

    etc/repart.d/50-atoll-root.conf
        [Partition] Type=root: systemd-repart (systemd's own, run at every boot
        by systemd-repart.service) matches the root partition by its GPT type
        and, with no size limit, grows it over the free space after it; it tells
        the kernel the new size (BLKPG) while the file system is mounted
    etc/systemd/system/atoll-growfs.service
        after systemd-repart: ``systemd-growfs /sysroot`` grows the mounted
        root file system (ext4 or xfs) to its partition
    etc/systemd/system/multi-user.target.wants/atoll-growfs.service -> ../atoll-growfs.service

Both are idempotent: a partition that already ends at the disk's end is left
as it is ("No changes"), and a file system as big as its partition is not
touched, so they run at every boot at the cost of reading the partition table.
systemd-repart works on GPT disks only (``--boot uefi`` and ``hybrid``); on an
MBR disk (``--boot bios``) it exits 77, which its unit counts as success, and
nothing grows.  The root partition is the disk's last one, so there is always
room after it.
"""

from __future__ import annotations

from pathlib import Path

from atoll.errors import from_oserror
from atoll.fsutil import write_atomic

REPART_CONF = "etc/repart.d/50-atoll-root.conf"
GROWFS_UNIT = "atoll-growfs.service"
UNIT_PATH = f"etc/systemd/system/{GROWFS_UNIT}"
WANTS_LINK = f"etc/systemd/system/multi-user.target.wants/{GROWFS_UNIT}"
#: Where atoll's early boot leaves the disk's root file system mounted.
SYSROOT = "/sysroot"

_REPART = """\
# Written by atoll install: systemd-repart grows the root partition over the free
# space after it (a disk bigger than the image). Remove this file to keep its size.
[Partition]
Type=root
"""

_UNIT = f"""\
# Written by atoll install: grows the root file system to its partition, which
# systemd-repart grew (see /etc/repart.d/50-atoll-root.conf). Does nothing when
# the file system already fills it.
[Unit]
Description=Grow the root file system to its partition
Documentation=man:systemd-repart(8) man:systemd-growfs(8)
After=systemd-repart.service
ConditionVirtualization=!container
ConditionPathIsMountPoint={SYSROOT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/lib/systemd/systemd-growfs {SYSROOT}

[Install]
WantedBy=multi-user.target
"""


def write_growfs(deployment_root: Path) -> None:
    """Write the repart drop-in and the growfs unit (enabled) into the deployment's /etc."""
    try:
        for rel, text in ((REPART_CONF, _REPART), (UNIT_PATH, _UNIT)):
            path = deployment_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode())
        link = deployment_root / WANTS_LINK
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(f"../{GROWFS_UNIT}")
    except OSError as exc:
        raise from_oserror(exc, str(deployment_root)) from exc
