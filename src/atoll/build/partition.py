"""The low-level parts of a disk: the partition table, the file system, GRUB's boot code.

A disk atoll makes, without mounting anything (no loop device, no root
privileges beyond reading the tree it packs)::

    sector 0           MBR: GRUB's boot.img (first 440 bytes), disk signature and
                       the partition table (sfdisk)
    sectors 1-2047     GRUB's core.img (grub-mkimage): finds the root file system by
                       UUID and reads /boot/grub/grub.cfg from it
    1 MiB - end        partition 1, type 83 (Linux), bootable: ext4 made by
                       ``mkfs.ext4 -E offset=1048576 -d TREE`` from a directory

GRUB's own ``grub-bios-setup`` insists on finding the OS device that holds its
modules directory, which a disk image in a file does not have; so the boot code
is written the way ``grub-bios-setup`` writes it for a core image embedded right
after the MBR: boot.img's code with the disk's own signature and partition
table kept (bytes 440-511), and core.img at sector 1, whose first sector
(diskboot.img, as ``grub-mkimage`` leaves it) already lists the sectors that
follow.  boot.img's ``kernel_sector`` (offset 0x5c) says where core.img starts:
sector 1.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from atoll.errors import DiskError, from_oserror
from atoll.run import find_tool, run

SECTOR = 512
#: Where partition 1 starts: 1 MiB, which leaves room for core.img after the MBR.
PARTITION_START = 2048 * SECTOR
GRUB_PLATFORM = "i386-pc"
GRUB_MODULES_DIR = Path("/usr/lib/grub") / GRUB_PLATFORM
#: The modules core.img carries: it then needs nothing from the disk but grub.cfg.
GRUB_MODULES = (
    "biosdisk",
    "part_msdos",
    "ext2",
    "search_fs_uuid",
    "normal",
    "linux",
    "test",
    "loadenv",
    "echo",
    "serial",
    "terminal",
    "configfile",
)
#: boot.img: where the LBA of core.img's first sector goes, and where the part
#: of sector 0 that belongs to the disk (signature, partition table) begins.
KERNEL_SECTOR_OFFSET = 0x5C
MBR_CODE_END = 0x1B8
MBR_SIGNATURE = b"\x55\xaa"


def is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except FileNotFoundError:
        return False


def device_size(path: Path) -> int:
    """Size in bytes of a block device or regular file."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc


def write_partition_table(target: Path, size: int) -> tuple[int, int]:
    """One bootable Linux partition from 1 MiB to the end (MBR, sfdisk); return
    its offset and size in bytes."""
    if size < PARTITION_START + 64 * 1024 * 1024:
        raise DiskError(f"{target}: {size} bytes is too small for a disk (64 MiB or more)")
    part_size = (size - PARTITION_START) // (1024 * 1024) * (1024 * 1024)
    script = (
        f"label: dos\nstart={PARTITION_START // SECTOR}, size={part_size // SECTOR}, "
        "type=83, bootable\n"
    )
    sfdisk = find_tool("sfdisk", "fdisk")
    run(
        [sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "always", target],
        input=script.encode(),
    )
    return PARTITION_START, part_size


def make_ext4(
    target: Path,
    tree: Path,
    *,
    offset: int,
    size: int,
    uuid: str,
    label: str,
    inodes: int,
) -> None:
    """An ext4 file system holding a copy of *tree*, written at *offset* of *target*."""
    mkfs = find_tool("mkfs.ext4", "e2fsprogs")
    run(
        [
            mkfs,
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            label,
            "-U",
            uuid,
            "-N",
            str(inodes),
            "-E",
            f"offset={offset},root_owner=0:0",
            "-d",
            tree,
            target,
            f"{size // 1024}k",
        ]
    )


def make_core_image(dest: Path, uuid: str, prefix: str = "/boot/grub") -> Path:
    """GRUB's core.img: finds the file system by UUID, then reads PREFIX/grub.cfg."""
    mkimage = find_tool("grub-mkimage", "grub-common")
    if not (GRUB_MODULES_DIR / "boot.img").is_file():
        raise DiskError(
            f"GRUB for BIOS is not installed ({GRUB_MODULES_DIR} has no boot.img)",
            hint="install it with: apt-get install grub-pc-bin",
        )
    early = dest.with_name("early-grub.cfg")
    early.write_text(f"search.fs_uuid {uuid} root\nset prefix=($root){prefix}\n")
    run(
        [
            mkimage,
            "-O",
            GRUB_PLATFORM,
            "-d",
            GRUB_MODULES_DIR,
            "-c",
            early,
            "-p",
            prefix,
            "-o",
            dest,
            *GRUB_MODULES,
        ]
    )
    return dest


def install_boot_code(target: Path, core_img: Path) -> None:
    """Write boot.img into the MBR (keeping the partition table) and core.img
    right after it, as ``grub-bios-setup`` does for an embedded core image."""
    boot = bytearray((GRUB_MODULES_DIR / "boot.img").read_bytes())
    core = core_img.read_bytes()
    if len(boot) != SECTOR:
        raise DiskError(f"{GRUB_MODULES_DIR / 'boot.img'}: not {SECTOR} bytes")
    if len(core) > PARTITION_START - SECTOR:
        raise DiskError(f"{core_img}: {len(core)} bytes do not fit before the first partition")
    try:
        with target.open("r+b") as fh:
            mbr = fh.read(SECTOR)
            if len(mbr) != SECTOR or mbr[510:512] != MBR_SIGNATURE:
                raise DiskError(f"{target}: no partition table in sector 0")
            boot[MBR_CODE_END:SECTOR] = mbr[MBR_CODE_END:SECTOR]
            struct.pack_into("<Q", boot, KERNEL_SECTOR_OFFSET, 1)
            fh.seek(0)
            fh.write(boot)
            fh.seek(SECTOR)
            fh.write(core)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise from_oserror(exc, str(target)) from exc
