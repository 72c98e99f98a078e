"""Disks and disk images from bootable images: ``atoll install to-disk`` and
``atoll disk-image``.

A disk is made in four steps, none of which mounts anything:

1. **install** the image into a sysroot in a staging directory, with the same
   code as ``atoll install to-filesystem`` (:meth:`Device.install`), with
   ``root=UUID=…`` naming the file system that is about to be made;
2. **check** that the deployment can boot a machine: a kernel
   (``usr/lib/modules/KVER/vmlinuz``), its initramfs (``initramfs.img`` beside
   it) and atoll's early-boot hook (:data:`atoll.boot.early.HOOKS`); then write
   GRUB's configuration and environment block (:mod:`atoll.sysroot.bootloader.grub`);
3. **partition** the target (:class:`BootMode`: MBR for ``bios``, GPT with an
   EFI system partition for ``uefi`` and ``hybrid``) and **make the file
   system** from the staging directory (``mkfs.ext4 -d``);
4. **install GRUB**: its BIOS boot code (:mod:`atoll.build.partition`) and/or
   GRUB for UEFI in the ESP (:mod:`atoll.build.esp`).  Both read the same
   ``grub.cfg`` and ``grubenv`` from the root file system.

A raw file is written under a temporary name beside the target and renamed
over it at the end, so a failure leaves no half-made disk; a qcow2 image is
converted from a raw one (``qemu-img convert``).  The staging directory is
removed in every case.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import secrets
import tempfile
import uuid as uuid_mod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.boot.early import HOOKS, has_early_boot
from atoll.build.disklayout import (
    DataPartition,
    DiskLayout,
    Filesystem,
    split_trees,
    write_fstab,
)
from atoll.build.esp import REMOVABLE_PATH, make_esp, make_grub_efi, secure_boot_files
from atoll.build.growfs import write_growfs
from atoll.build.imagetree import HEAD_BYTES
from atoll.build.partition import (
    BIOS_BOOT_SIZE,
    ESP_SIZE,
    BootMode,
    Extent,
    Layout,
    device_size,
    install_boot_code,
    is_block_device,
    make_core_image,
    make_ext4,
    write_partition_table,
)
from atoll.build.xfs import MIN_SIZE as XFS_MIN_SIZE
from atoll.build.xfs import Protofile, make_xfs
from atoll.build.xfs import prepare as prepare_xfs
from atoll.build.xfs import tree_usage as xfs_tree_usage
from atoll.errors import (
    DiskError,
    InvalidInputError,
    NoKernelError,
    NotBootableError,
    from_oserror,
)
from atoll.fsutil import TMP_PREFIX, remove_tree, write_atomic
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.progress import NullProgress, ProgressSink
from atoll.run import find_tool, run
from atoll.sysroot.bootloader.grub import GrubSettings, install_grub_config
from atoll.sysroot.layout import DEFAULT_STATEROOT, Sysroot
from atoll.sysroot.lifecycle import Admission, Device

MIB = 1024 * 1024
ROOT_LABEL = "atoll-root"
#: Kernel arguments ``atoll disk-image`` adds unless a ``console=`` is given:
#: messages on the screen and on the first serial port (what a VM shows).
VM_CONSOLE_KARGS = ("console=tty0", "console=ttyS0,115200")
SSH_TMPFILES = "etc/tmpfiles.d/atoll-root-ssh.conf"


class ImageType(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VHDX = "vhdx"
    AMI = "ami"


#: ``qemu-img convert`` from the raw disk: output format and options.  vmdk is
#: stream-optimized (what vSphere imports, in an OVA or on its own), with the
#: LSI Logic SCSI adapter vSphere gives a guest by default; vhdx is dynamic
#: (Hyper-V, Azure Stack HCI).
CONVERSIONS: dict[ImageType, tuple[str, tuple[str, ...]]] = {
    ImageType.QCOW2: ("qcow2", ()),
    ImageType.VMDK: ("vmdk", ("-o", "subformat=streamOptimized,adapter_type=lsilogic")),
    ImageType.VHDX: ("vhdx", ("-o", "subformat=dynamic")),
}
GIB = 1024 * MIB


@dataclass(frozen=True)
class DiskOptions:
    filesystem: Filesystem = Filesystem.EXT4
    #: Bytes; None: what the content needs, doubled, plus 1 GiB (sparse in a file).
    size: int | None = None
    kargs: tuple[str, ...] = ()
    root_ssh_authorized_keys: bytes | None = None
    stateroot: str = DEFAULT_STATEROOT
    #: Where the staging sysroot is made (None: beside the target, or the temp dir).
    workdir: Path | None = None
    #: The image later upgrades follow, when not the source (see Device.install).
    target_image: ImageName | None = None
    boot: BootMode = BootMode.UEFI
    #: The disk's size is a multiple of this (an AMI: whole GiB, as EBS volumes are).
    align: int = MIB
    #: The ESP gets Debian's signed shim and GRUB (atoll.build.esp) instead of a GRUB
    #: built here, so that firmware with Secure Boot on starts it.
    secure_boot: bool = False
    #: Checks the image before anything is imported (the trust policy); raises to refuse.
    admit: Admission | None = None
    #: Files written into the deployment (path under it, bytes) before the file
    #: system is made: the install config's host name, users and policy.
    files: tuple[tuple[str, bytes], ...] = ()
    #: Partitions of their own for /var or directories under it (--layout).
    layout: DiskLayout = field(default_factory=DiskLayout)

    def sysroot_var(self, sysroot: Path) -> Path:
        return Sysroot(sysroot).var(self.stateroot)


@dataclass
class DiskResult:
    target: Path
    image: str
    digest: str
    version: str | None
    deployment: str
    size: int
    layout: Layout
    fs_uuid: str
    kernel: str
    kargs: list[str] = field(default_factory=list)
    type: ImageType = ImageType.RAW
    boot: BootMode = BootMode.UEFI
    secure_boot: bool = False
    filesystem: Filesystem = Filesystem.EXT4
    partitions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bootloader(self) -> str:
        efi = "shim, signed x86_64-efi" if self.secure_boot else "x86_64-efi"
        platforms = {
            BootMode.UEFI: efi,
            BootMode.BIOS: "i386-pc",
            BootMode.HYBRID: f"i386-pc, {efi}",
        }
        return f"grub ({platforms[self.boot]})"

    def to_json(self) -> dict[str, Any]:
        root = self.layout.root
        esp = self.layout.esp
        return {
            "target": str(self.target),
            "type": self.type.value,
            "image": self.image,
            "imageDigest": self.digest,
            "version": self.version,
            "deployment": self.deployment,
            "size": self.size,
            "partition": {"offset": root.offset, "size": root.size},
            "filesystem": {
                "type": self.filesystem.value,
                "uuid": self.fs_uuid,
                "label": ROOT_LABEL,
            },
            "kernel": self.kernel,
            "kargs": self.kargs,
            "boot": self.boot.value,
            "partitionTable": "dos" if self.boot is BootMode.BIOS else "gpt",
            "esp": {"offset": esp.offset, "size": esp.size} if esp else None,
            "secureBoot": self.secure_boot,
            "bootloader": self.bootloader,
            "partitions": self.partitions,
        }


class _Steps:
    """Progress for the disk steps: one task, one subtask per step."""

    def __init__(self, sink: ProgressSink, target: Path, names: Sequence[str]) -> None:
        self.sink = sink
        self.names = list(names)
        sink.begin("disk", f"Making disk {target}", str(target), len(names))

    @contextlib.contextmanager
    def step(self, name: str, description: str, total: int = 1) -> Iterator[None]:
        self.sink.subtask(name, "step", description, total)
        yield
        self.sink.advance(name, total)
        self.sink.done(name)

    def end(self, ok: bool) -> None:
        self.sink.end(ok)


def _tree_usage(root: Path) -> tuple[int, int]:
    """(bytes in 4 KiB blocks, inodes) of a tree, each hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    blocks = inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            inodes += 1
            blocks += max(1, math.ceil(st.st_size / 4096))
    return blocks * 4096, inodes + 1


def _needed_size(content: int, inodes: int, mode: BootMode) -> int:
    """What the disk needs for *content*: the space before the partition (and
    the ESP), the file system's inode tables (two inodes per file, 256 bytes
    each), its journal and some slack."""
    boot = ESP_SIZE + BIOS_BOOT_SIZE if mode.efi else 0
    return 2 * MIB + boot + int(content * 1.15) + inodes * 512 + 96 * MIB


def check_bootable(device: Device, image: str) -> tuple[Path, str]:
    """The deployment's directory and kernel version; :class:`NotBootableError`
    naming what is missing otherwise."""
    state = device.state()
    deployment = state.current
    root = state.path(deployment)
    kernel = device.store().kernel(deployment.commit)
    if kernel is None:
        raise NotBootableError(
            f"{image}: no kernel (usr/lib/modules/KVER/vmlinuz): it cannot boot a machine",
            hint="install a kernel in the image (Debian: linux-image-amd64)",
        )
    if kernel.initramfs is None:
        raise NotBootableError(
            f"{image}: kernel {kernel.kver} has no initramfs at "
            f"/usr/lib/modules/{kernel.kver}/initramfs.img",
            hint="make one when the image is built (mkinitramfs, dracut) with atoll's hook",
        )
    if not has_early_boot(root):
        raise NotBootableError(
            f"{image}: no atoll early-boot hook (/{' or /'.join(HOOKS)}): the initramfs "
            "cannot make the deployment the root file system",
            hint="add it (atoll build does; or atoll.boot.install_early_boot), then the initramfs",
        )
    return root, kernel.kver


def _check_signed(kernel: Path, source: ImageName) -> None:
    """Refuse, for a Secure Boot disk, a kernel shim would not start."""
    from atoll.build.lint import unsigned_reason

    try:
        with kernel.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
        size = kernel.stat().st_size
    except OSError as exc:
        raise from_oserror(exc, str(kernel)) from exc
    reason = unsigned_reason(head, size)
    if reason is not None:
        raise NotBootableError(
            f"{source}: kernel /{kernel.parent.name}/vmlinuz: {reason}: it cannot boot with "
            "Secure Boot on",
            hint="use the distribution's signed kernel, or make the disk without --secure-boot",
        )


def _write_ssh_keys(deployment_root: Path, keys: bytes) -> None:
    """root's authorized_keys, as a tmpfiles.d rule in /etc (carried over by
    every update, unlike /root in a deployment): written at each boot if absent."""
    encoded = base64.b64encode(keys).decode()
    text = (
        "# Written by atoll install --root-ssh-authorized-keys\n"
        "d /root/.ssh 0700 root root -\n"
        f"f~ /root/.ssh/authorized_keys 0600 root root - {encoded}\n"
    )
    path = deployment_root / SSH_TMPFILES
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode())


def _write_file(deployment_root: Path, rel: str, data: bytes) -> None:
    """*data* as *rel* in the deployment, never through a symlink the image ships
    (an absolute one would lead out of the deployment, onto this machine)."""
    path = deployment_root / rel
    for parent in reversed(path.relative_to(deployment_root).parents[:-1]):
        if (deployment_root / parent).is_symlink():
            raise DiskError(
                f"/{parent} is a symlink in the image: /{rel} is not written through it"
            )
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


@contextlib.contextmanager
def _staging(workdir: Path) -> Iterator[Path]:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}disk-", dir=workdir))
    except OSError as exc:
        raise DiskError(f"{workdir}: cannot make a staging directory ({exc.strerror})") from None
    try:
        yield path
    finally:
        remove_tree(path)


def install_to_disk(
    target: Path,
    source: ImageName,
    *,
    options: DiskOptions | None = None,
    ctx: SystemContext | None = None,
    progress: ProgressSink | None = None,
) -> DiskResult:
    """Make *target* (a block device, or a raw disk image file, replaced) a disk
    that boots *source*."""
    options = options or DiskOptions()
    if options.secure_boot and not options.boot.efi:
        raise InvalidInputError("--secure-boot needs a UEFI disk (--boot uefi or hybrid)")
    sink = progress or NullProgress()
    block = is_block_device(target)
    if target.exists() and not block and not target.is_file():
        raise DiskError(f"{target}: neither a block device nor a regular file")
    if not block and not target.parent.is_dir():
        raise DiskError(f"{target.parent}: no such directory")
    tools = [("sfdisk", "fdisk"), ("grub-mkimage", "grub-common")]
    if options.filesystem is Filesystem.XFS:
        tools += [("mkfs.xfs", "xfsprogs"), ("xfs_db", "xfsprogs")]
    else:
        tools += [("mkfs.ext4", "e2fsprogs")]
    if options.boot.efi:
        tools += [("mkfs.fat", "dosfstools"), ("mcopy", "mtools")]
    for tool, package in tools:
        find_tool(tool, package)
    fs_uuid = str(uuid_mod.uuid4())
    kargs = [f"root=UUID={fs_uuid}", *options.kargs]
    workdir = options.workdir or (Path(tempfile.gettempdir()) if block else target.parent)
    with _staging(workdir) as staging:
        sysroot = staging / "root"
        device = Device(sysroot, ctx, progress=progress, admit=options.admit)
        try:
            installed = device.install(
                source, stateroot=options.stateroot, kargs=kargs, target=options.target_image
            )
        except NoKernelError as exc:
            raise NotBootableError(
                f"{source}: no kernel (usr/lib/modules/KVER/vmlinuz): it cannot boot a machine",
                hint="install a kernel in the image (Debian: linux-image-amd64)",
            ) from exc
        steps = _Steps(sink, target, ["check", "partition", "filesystem", "bootloader"])
        ok = False
        try:
            with steps.step("check", "Checking that the image can boot"):
                deployment_root, kver = check_bootable(device, str(source))
                if options.secure_boot:
                    _check_signed(deployment_root / "usr/lib/modules" / kver / "vmlinuz", source)
                if options.root_ssh_authorized_keys is not None:
                    _write_ssh_keys(deployment_root, options.root_ssh_authorized_keys)
                for rel, body in options.files:
                    _write_file(deployment_root, rel, body)
                write_growfs(deployment_root)
                install_grub_config(
                    sysroot / "boot", GrubSettings(boot_prefix="/boot", flush_after_write=True)
                )
            parts = split_trees(
                options.sysroot_var(sysroot), options.layout, staging / "partitions"
            )
            write_fstab(deployment_root, parts, options.stateroot)
            content, inodes = _usage(options.filesystem, sysroot)
            needed = _fs_needed(options.filesystem, content, inodes, options.boot)
            data = [_data_size(part) for part in parts]
            size = _disk_size(target, block, options.size, needed + sum(data), options.align)
            # A name mkfs.xfs cannot take stops the install here, before the disk is touched.
            trees = [(options.filesystem, sysroot)] + [(p.spec.filesystem, p.tree) for p in parts]
            protos = {
                tree: prepare_xfs(tree, staging / f"xfs-{i}.proto")
                for i, (kind, tree) in enumerate(trees)
                if kind is Filesystem.XFS
            }
            dest = (
                target
                if block
                else target.with_name(f"{TMP_PREFIX}{target.name}.{secrets.token_hex(4)}")
            )
            try:
                if not block:
                    with dest.open("xb") as fh:
                        fh.truncate(size)
                with steps.step("partition", "Writing the partition table"):
                    layout = write_partition_table(dest, size, options.boot, data)
                with steps.step(
                    "filesystem", f"Making the {options.filesystem} file system", content
                ):
                    _make_filesystem(options.filesystem, dest, sysroot, layout.root,
                                     fs_uuid, ROOT_LABEL, staging, protos.get(sysroot),
                                     inodes)  # fmt: skip
                    for part, extent in zip(parts, layout.data, strict=True):
                        _make_filesystem(part.spec.filesystem, dest, part.tree, extent,
                                         part.uuid, part.label, staging,
                                         protos.get(part.tree))  # fmt: skip
                with steps.step("bootloader", f"Installing GRUB ({options.boot})"):
                    _install_bootloader(dest, layout, options, staging, fs_uuid)
                if not block:
                    dest.rename(target)
            finally:
                if not block:
                    dest.unlink(missing_ok=True)
            ok = True
        finally:
            steps.end(ok)
        deployment = installed.deployment
        return DiskResult(
            target=target,
            image=str(source),
            digest=str(installed.image.digest),
            version=installed.image.version,
            deployment=f"{deployment.stateroot}/{deployment.id}" if deployment else "",
            size=size,
            layout=layout,
            fs_uuid=fs_uuid,
            kernel=kver,
            kargs=["rw", *kargs],
            boot=options.boot,
            secure_boot=options.secure_boot,
            filesystem=options.filesystem,
            partitions=[
                part.to_json(extent.offset, extent.size)
                for part, extent in zip(parts, layout.data, strict=True)
            ],
        )


def _usage(kind: Filesystem, tree: Path) -> tuple[int, int]:
    return xfs_tree_usage(tree) if kind is Filesystem.XFS else _tree_usage(tree)


def _fs_needed(kind: Filesystem, content: int, inodes: int, mode: BootMode) -> int:
    needed = _needed_size(content, inodes, mode)
    if kind is Filesystem.XFS:  # mkfs.xfs refuses a smaller one
        needed = max(needed, _needed_size(0, 0, mode) + XFS_MIN_SIZE)
    return needed


def _data_size(part: DataPartition) -> int:
    """The size of a layout's partition, refused when its content does not fit."""
    content, inodes = _usage(part.spec.filesystem, part.tree)
    # Inode tables, the journal (ext4: 4 MiB on a partition under 128 MiB, more on
    # bigger ones; xfs: its log) and some slack.
    needed = int(content * 1.15) + inodes * 1024 + 16 * MIB
    if part.spec.filesystem is Filesystem.XFS:
        needed = max(needed + 32 * MIB, XFS_MIN_SIZE)
    if part.spec.size < needed:
        mib = math.ceil(needed / MIB)
        raise DiskError(
            f"the partition for {part.spec.mount}: {part.spec.size // MIB} MiB is too small "
            f"for it ({part.spec.filesystem}, what the image has there)",
            hint=f'give it size = "{mib}M" or more in the layout file',
        )
    return part.spec.size


def _make_filesystem(
    kind: Filesystem,
    dest: Path,
    tree: Path,
    extent: Extent,
    uuid: str,
    label: str,
    staging: Path,
    proto: Protofile | None,
    inodes: int | None = None,
) -> None:
    if kind is Filesystem.XFS:
        make_xfs(dest, tree, offset=extent.offset, size=extent.size, uuid=uuid, label=label,
                 staging=staging, proto=proto)  # fmt: skip
        return
    if inodes is None:
        inodes = _tree_usage(tree)[1]
    make_ext4(dest, tree, offset=extent.offset, size=extent.size, uuid=uuid, label=label,
              inodes=max(inodes * 2, 65536))  # fmt: skip


def _install_bootloader(
    dest: Path, layout: Layout, options: DiskOptions, staging: Path, fs_uuid: str
) -> None:
    """BIOS GRUB's boot code and/or GRUB for UEFI in the ESP: both read the
    same ``/boot/grub/grub.cfg`` and ``grubenv`` from the root file system."""
    mode = options.boot
    if mode.legacy:
        core = make_core_image(staging / "core.img", fs_uuid)
        install_boot_code(dest, core, layout.core_sector)
    if mode.efi:
        if layout.esp is None:
            raise DiskError(f"{dest}: a {mode} disk without an EFI system partition")
        if options.secure_boot:
            files = secure_boot_files(staging, fs_uuid)
        else:
            files = {REMOVABLE_PATH: make_grub_efi(staging / "grubx64.efi", fs_uuid)}
        make_esp(dest, layout.esp, files)


def _disk_size(target: Path, block: bool, wanted: int | None, needed: int, align: int = MIB) -> int:
    if block:
        size = device_size(target)
        if wanted is not None and wanted > size:
            raise DiskError(f"{target}: --size {wanted} is more than the device's {size} bytes")
        size = (wanted or size) // MIB * MIB
    else:
        size = wanted or (needed * 2 + 1024 * MIB)
        size = -(-size // align) * align if align > MIB else size // MIB * MIB
    if size < needed:
        mib = math.ceil(needed / MIB)
        raise DiskError(
            f"{target}: {size // MIB} MiB is too small for this image",
            hint=f"it needs about {mib} MiB; give --size {mib}M or more",
        )
    return size


def make_disk_image(
    output: Path,
    source: ImageName,
    *,
    image_type: ImageType = ImageType.RAW,
    options: DiskOptions | None = None,
    ctx: SystemContext | None = None,
    progress: ProgressSink | None = None,
) -> DiskResult:
    """``atoll disk-image``: a disk image file of *image_type* that boots *source*
    (on a VM: the console on the screen and on the first serial port).  An
    ``ami`` is the raw disk with its size rounded up to whole GiB."""
    options = options or DiskOptions()
    if not any(k.startswith("console=") for k in options.kargs):
        options = DiskOptions(**{**options.__dict__, "kargs": (*VM_CONSOLE_KARGS, *options.kargs)})
    if image_type is ImageType.AMI:
        options = DiskOptions(**{**options.__dict__, "align": GIB})
    if is_block_device(output):
        raise DiskError(f"{output}: a block device; use atoll install to-disk for devices")
    if image_type not in CONVERSIONS:
        result = install_to_disk(output, source, options=options, ctx=ctx, progress=progress)
        result.type = image_type
        return result
    qemu_img = find_tool("qemu-img", "qemu-utils")
    fmt, convert_options = CONVERSIONS[image_type]
    raw = output.with_name(f"{TMP_PREFIX}{output.name}.{secrets.token_hex(4)}.raw")
    tmp = output.with_name(f"{TMP_PREFIX}{output.name}.{secrets.token_hex(4)}")
    try:
        result = install_to_disk(raw, source, options=options, ctx=ctx, progress=progress)
        run([qemu_img, "convert", "-f", "raw", "-O", fmt, *convert_options, raw, tmp])
        tmp.rename(output)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    result.target = output
    result.type = image_type
    return result
