"""The low-level parts of a disk: the partition table, the file system, GRUB's boot code.

A disk atoll makes, without mounting anything (no loop device, no root
privileges beyond reading the tree it packs), in one of three layouts
(:class:`BootMode`).  ``bios``, an MBR disk::

    sector 0           MBR: GRUB's boot.img (first 440 bytes), disk signature and
                       the partition table (sfdisk)
    sectors 1-2047     GRUB's core.img (grub-mkimage): finds the root file system by
                       UUID and reads /boot/grub/grub.cfg from it
    1 MiB - end        partition 1, type 83 (Linux), bootable: ext4 made by
                       ``mkfs.ext4 -E offset=1048576 -d TREE`` from a directory

``uefi`` and ``hybrid``, a GPT disk::

    sector 0           protective MBR (hybrid: with boot.img's code in its first
                       440 bytes, pointing at core.img in the BIOS boot partition)
    sectors 1-33       GPT header and partition entries (a copy at the disk's end)
    1 MiB              hybrid only: "BIOS boot" partition, 1 MiB: core.img
    1 or 2 MiB         EFI system partition, 64 MiB, FAT32 (atoll.build.esp):
                       EFI/BOOT/BOOTX64.EFI, GRUB for x86_64-efi
    then - end         root partition (Linux root x86-64 type): ext4, as above

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
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from atoll.errors import DiskError, from_oserror
from atoll.run import find_tool, run

SECTOR = 512
MIB = 1024 * 1024
#: Where partition 1 starts: 1 MiB, which leaves room for core.img after the MBR.
PARTITION_START = 2048 * SECTOR
#: The EFI system partition: room for GRUB (a few MiB) and for a signed shim,
#: GRUB and their configuration; 64 MiB is also past FAT32's smallest size.
ESP_SIZE = 64 * MIB
BIOS_BOOT_SIZE = MIB
#: GPT partition types (the Discoverable Partitions Specification's root type
#: for x86-64, so systemd-gpt-auto-generator would find it too).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ROOT_TYPE_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
#: The partitions of a layout file (atoll.build.disklayout): "Linux filesystem data",
#: which nothing mounts on its own (the deployment's fstab does).
DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
#: An MBR has room for four primary partitions.
MBR_MAX_PARTITIONS = 4
#: GPT keeps a backup of its header and entries in the last 33 sectors.
GPT_BACKUP = 33 * SECTOR
GRUB_PLATFORM = "i386-pc"
GRUB_MODULES_DIR = Path("/usr/lib/grub") / GRUB_PLATFORM
#: What GRUB needs, for BIOS and UEFI alike, to find the root file system by UUID
#: and run atoll's grub.cfg (its counting included).
GRUB_COMMON_MODULES = (
    "part_msdos",
    "part_gpt",
    "ext2",
    "xfs",
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
#: The modules core.img carries: it then needs nothing from the disk but grub.cfg.
GRUB_MODULES = ("biosdisk", *GRUB_COMMON_MODULES)
#: diskboot.img (core.img's first sector): its first block list, whose start
#: sector ``grub-mkimage`` leaves at 2 (core.img at sector 1).
BLOCKLIST_START_OFFSET = SECTOR - 12
#: boot.img: where the LBA of core.img's first sector goes, and where the part
#: of sector 0 that belongs to the disk (signature, partition table) begins.
KERNEL_SECTOR_OFFSET = 0x5C
MBR_CODE_END = 0x1B8
MBR_SIGNATURE = b"\x55\xaa"


class BootMode(StrEnum):
    """Which firmware the disk boots with."""

    UEFI = "uefi"
    BIOS = "bios"
    HYBRID = "hybrid"

    @property
    def efi(self) -> bool:
        return self is not BootMode.BIOS

    @property
    def legacy(self) -> bool:
        return self is not BootMode.UEFI


@dataclass(frozen=True)
class Extent:
    """A partition: its offset and size in bytes."""

    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    """Where the partitions of a disk are (None: the layout has none of that kind)."""

    root: Extent
    esp: Extent | None = None
    bios_boot: Extent | None = None
    #: The partitions of a layout file, in disk order, between the ESP and the root.
    data: tuple[Extent, ...] = ()

    @property
    def core_sector(self) -> int:
        """The sector where BIOS GRUB's core.img goes."""
        return self.bios_boot.offset // SECTOR if self.bios_boot else 1


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


def plan_layout(size: int, mode: BootMode, data: Sequence[int] = ()) -> Layout:
    """The partitions of a disk of *size* bytes booted by *mode*, with partitions
    of *data* bytes each (rounded up to MiB) before the root, which takes the rest."""
    if mode is BootMode.BIOS:
        if len(data) + 1 > MBR_MAX_PARTITIONS:
            raise DiskError(
                f"an MBR disk (--boot bios) holds {MBR_MAX_PARTITIONS} partitions, not "
                f"{len(data) + 1}"
            )
        boot, tail = PARTITION_START, 0
    else:
        boot = PARTITION_START + ESP_SIZE + (BIOS_BOOT_SIZE if mode.legacy else 0)
        tail = GPT_BACKUP
    extents = []
    head = boot
    for part in data:
        extents.append(Extent(head, -(-part // MIB) * MIB))
        head += extents[-1].size
    if size < head + tail + 64 * MIB:
        raise DiskError(
            f"{size} bytes is too small for a {mode} disk ({(head + tail) // MIB + 64} MiB or more)"
        )
    root = Extent(head, (size - head - tail) // MIB * MIB)
    if mode is BootMode.BIOS:
        return Layout(root, data=tuple(extents))
    bios_boot = Extent(PARTITION_START, BIOS_BOOT_SIZE) if mode.legacy else None
    esp = Extent(boot - ESP_SIZE, ESP_SIZE)
    return Layout(root, esp, bios_boot, tuple(extents))


def _sfdisk_script(layout: Layout, mode: BootMode) -> str:
    def line(extent: Extent, kind: str) -> str:
        return f"start={extent.offset // SECTOR}, size={extent.size // SECTOR}, {kind}\n"

    if mode is BootMode.BIOS:
        data = "".join(line(extent, "type=83") for extent in layout.data)
        return "label: dos\n" + data + line(layout.root, "type=83, bootable")
    script = "label: gpt\n"
    if layout.bios_boot:
        script += line(layout.bios_boot, f'type={BIOS_BOOT_TYPE}, name="BIOS boot"')
    if layout.esp:
        script += line(layout.esp, f'type={ESP_TYPE}, name="EFI System"')
    for extent in layout.data:
        script += line(extent, f'type={DATA_TYPE}, name="data"')
    return script + line(layout.root, f'type={ROOT_TYPE_X86_64}, name="root"')


def write_partition_table(
    target: Path, size: int, mode: BootMode = BootMode.BIOS, data: Sequence[int] = ()
) -> Layout:
    """The partition table of :func:`plan_layout` (sfdisk): MBR with one
    bootable Linux partition for BIOS, GPT with an ESP for UEFI."""
    try:
        layout = plan_layout(size, mode, data)
    except DiskError as exc:
        raise DiskError(f"{target}: {exc.message}") from None
    sfdisk = find_tool("sfdisk", "fdisk")
    run(
        [sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "always", target],
        input=_sfdisk_script(layout, mode).encode(),
    )
    return layout


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


def grub_mkimage(
    dest: Path, uuid: str, platform: str, modules: tuple[str, ...], prefix: str = "/boot/grub"
) -> Path:
    """GRUB for *platform* with *modules* built in and an early configuration
    that finds the file system by UUID, then reads PREFIX/grub.cfg."""
    mkimage = find_tool("grub-mkimage", "grub-common")
    early = dest.with_name(f"early-{platform}.cfg")
    early.write_text(f"search.fs_uuid {uuid} root\nset prefix=($root){prefix}\n")
    directory = Path("/usr/lib/grub") / platform
    run([mkimage, "-O", platform, "-d", directory, "-c", early, "-p", prefix, "-o", dest,
         *modules])  # fmt: skip
    return dest


def make_core_image(dest: Path, uuid: str, prefix: str = "/boot/grub") -> Path:
    """GRUB's core.img: finds the file system by UUID, then reads PREFIX/grub.cfg."""
    if not (GRUB_MODULES_DIR / "boot.img").is_file():
        raise DiskError(
            f"GRUB for BIOS is not installed ({GRUB_MODULES_DIR} has no boot.img)",
            hint="install it with: apt-get install grub-pc-bin",
        )
    return grub_mkimage(dest, uuid, GRUB_PLATFORM, GRUB_MODULES, prefix)


def install_boot_code(target: Path, core_img: Path, core_sector: int = 1) -> None:
    """Write boot.img into the MBR (keeping the partition table) and core.img at
    *core_sector*: right after the MBR on an MBR disk, as ``grub-bios-setup``
    does for an embedded core image, or the BIOS boot partition of a GPT disk
    (then core.img's block list is moved to follow it)."""
    boot = bytearray((GRUB_MODULES_DIR / "boot.img").read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(boot) != SECTOR:
        raise DiskError(f"{GRUB_MODULES_DIR / 'boot.img'}: not {SECTOR} bytes")
    room = PARTITION_START - SECTOR if core_sector == 1 else BIOS_BOOT_SIZE
    if len(core) > room:
        raise DiskError(f"{core_img}: {len(core)} bytes do not fit in {room} bytes")
    (start,) = struct.unpack_from("<Q", core, BLOCKLIST_START_OFFSET)
    if start != 2:
        raise DiskError(f"{core_img}: not a core.img as grub-mkimage writes it")
    struct.pack_into("<Q", core, BLOCKLIST_START_OFFSET, core_sector + 1)
    try:
        with target.open("r+b") as fh:
            mbr = fh.read(SECTOR)
            if len(mbr) != SECTOR or mbr[510:512] != MBR_SIGNATURE:
                raise DiskError(f"{target}: no partition table in sector 0")
            boot[MBR_CODE_END:SECTOR] = mbr[MBR_CODE_END:SECTOR]
            struct.pack_into("<Q", boot, KERNEL_SECTOR_OFFSET, core_sector)
            fh.seek(0)
            fh.write(boot)
            fh.seek(core_sector * SECTOR)
            fh.write(core)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise from_oserror(exc, str(target)) from exc
