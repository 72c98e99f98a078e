"""The installer ISO: ``atoll disk-image --type iso`` and ``atoll iso customize``.

The installer environment is the image itself: its kernel and initramfs, and
its file system tree as the root, read-only, with ``init=`` naming a small
script that runs ``atoll install to-disk --config`` and powers off.  No
second operating system, and the atoll that installs is the image's own.  The
root is an ext4 file system appended to the ISO as a partition of its own, so
an initramfs that mounts ext4 from a disk (the image's, made for its own
disks) finds it by UUID when the ISO is written to a USB stick or attached as
a virtual disk; it needs no ISO 9660, loop or optical-drive driver.  A hybrid
ISO made by ``grub-mkrescue`` (xorriso) boots it with BIOS (El Torito and an
MBR) and UEFI (an EFI system partition image)::

    OUT.iso
    ├── ISO 9660 file system, label ATOLL_INSTALL
    │   ├── boot/vmlinuz, boot/initrd.img     the image's kernel and initramfs
    │   ├── boot/grub/grub.cfg                one entry: the installer
    │   └── atoll/iso.json                    {"version": 1, "rootUuid", "kernelArgs",
    │       atoll/install.toml                 "image", "imageDigest", "embedded"}; the config
    ├── El Torito BIOS boot image, EFI system partition (GRUB for i386-pc, x86_64-efi)
    └── appended partition: ext4, label ATOLL-INSTALL, UUID rootUuid
        ├── the image's tree (its /usr, /etc …)
        └── atoll-installer/init              PID 1 of the installer
            atoll-installer/install.toml      the install config
            atoll-installer/image.tar         the image as an OCI archive ("embedded")

``atoll iso customize`` copies the ext4 partition out, replaces
``atoll-installer/install.toml`` in it with ``debugfs`` (nothing is mounted)
and writes the ISO again around it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.build.disk import VM_CONSOLE_KARGS, _tree_usage, check_bootable
from atoll.build.esp import SHIM, SIGNED_GRUB
from atoll.build.partition import make_ext4
from atoll.errors import InstallerIsoError, NoKernelError, NotBootableError
from atoll.fsutil import TMP_PREFIX, remove_tree
from atoll.install.config import InstallConfig, parse_config
from atoll.install.installer import EMBEDDED_ARCHIVE
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName, parse_bootc_name
from atoll.progress import ProgressSink
from atoll.run import find_tool, run
from atoll.sysroot.lifecycle import Device

VERSION = 1
ROOT_LABEL = "ATOLL-INSTALL"
VOLUME_ID = "ATOLL_INSTALL"
INSTALLER_DIR = "atoll-installer"
INIT = f"{INSTALLER_DIR}/init"
MIB = 1024 * 1024
#: Seconds GRUB shows its menu before it starts the install.
MENU_TIMEOUT = 3

#: What ``atoll install to-disk`` runs inside the image, by boot mode: (paths
#: any of which will do, the Debian package).  The image must carry them, as a
#: bootc image carries what ``bootc install`` runs.
_TOOLS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "all": [
        (("usr/bin/python3",), "python3"),
        (("usr/bin/atoll",), "atoll (atoll build installs it)"),
        (("usr/sbin/sfdisk", "sbin/sfdisk"), "fdisk"),
        (("usr/sbin/mkfs.ext4", "sbin/mkfs.ext4"), "e2fsprogs"),
        (("usr/bin/grub-mkimage",), "grub-common"),
    ],
    "bios": [(("usr/lib/grub/i386-pc/boot.img",), "grub-pc-bin")],
    "efi": [
        (("usr/sbin/mkfs.fat", "sbin/mkfs.fat"), "dosfstools"),
        (("usr/bin/mcopy",), "mtools"),
        (("usr/lib/grub/x86_64-efi/linux.mod",), "grub-efi-amd64-bin"),
    ],
    "secure-boot": [
        ((str(SHIM).lstrip("/"),), "shim-signed"),
        ((str(SIGNED_GRUB).lstrip("/"),), "grub-efi-amd64-signed"),
    ],
}

INIT_SCRIPT = """\
#!/bin/sh
# PID 1 of the atoll installer (atoll.install.iso): the image's own kernel,
# initramfs and tree (read-only), no service manager.  Installs what the
# install config says, then powers the machine off whatever happened.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
HOME=/tmp
TMPDIR=/tmp
export PATH HOME TMPDIR
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs tmpfs /run
# The staging sysroot is made here: the machine needs memory for the image.
mount -t tmpfs -o mode=1777 tmpfs /tmp
start=$(cut -d. -f1 /proc/uptime)
echo "atoll installer: installing as /atoll-installer/install.toml says"
# Through a pipe: the console is a terminal, and a progress bar costs an emulated
# machine more than it tells anyone.
{ atoll install to-disk --config /atoll-installer/install.toml --workdir /tmp
  echo $? > /tmp/.status; } 2>&1 | cat
code=$(cat /tmp/.status)
if [ $code = 0 ]; then
    echo "atoll installer: installed in $(($(cut -d. -f1 /proc/uptime) - start)) s; powering off"
else
    echo "atoll installer: the install failed (exit code $code); powering off"
fi
sync
echo o > /proc/sysrq-trigger
sleep 600
"""


@dataclass
class IsoResult:
    target: Path
    image: str
    digest: str
    version: str | None
    kernel: str
    size: int
    root_uuid: str
    embedded: bool
    kargs: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "type": "iso",
            "image": self.image,
            "imageDigest": self.digest,
            "version": self.version,
            "kernel": self.kernel,
            "size": self.size,
            "installerRootUuid": self.root_uuid,
            "embedded": self.embedded,
            "kargs": self.kargs,
        }


def _check_tools(root: Path, config: InstallConfig, image: str) -> None:
    groups = ["all"]
    groups += ["bios"] if config.boot in ("bios", "hybrid") else []
    groups += ["efi"] if config.boot in ("uefi", "hybrid") else []
    groups += ["secure-boot"] if config.secure_boot else []
    missing = [
        (paths[0], package)
        for group in groups
        for paths, package in _TOOLS[group]
        if not any((root / p).exists() or (root / p).is_symlink() for p in paths)
    ]
    if missing:
        raise InstallerIsoError(
            f"{image}: the installer runs atoll install to-disk inside the image, and the "
            f"image lacks /{', /'.join(p for p, _ in missing)}",
            hint="install them in the image: " + ", ".join(sorted({p for _, p in missing})),
        )


def _grub_cfg(root_uuid: str, kargs: list[str], title: str) -> str:
    cmdline = " ".join([f"root=UUID={root_uuid}", "ro", f"init=/{INIT}", *kargs])
    return (
        "serial --unit=0 --speed=115200\n"
        "terminal_input console serial\n"
        "terminal_output console serial\n"
        f"set timeout={MENU_TIMEOUT}\n"
        "set default=0\n"
        f'menuentry "Install {title} (writes the disk the install config names)" {{\n'
        f"  linux /boot/vmlinuz {cmdline}\n"
        "  initrd /boot/initrd.img\n"
        "}\n"
    )


def _write_iso(tree: Path, root_image: Path, output: Path) -> None:
    """The hybrid ISO of *tree* with *root_image* appended as a partition,
    written under a temporary name and renamed over *output*."""
    mkrescue = find_tool("grub-mkrescue", "grub-common", why="it writes the installer ISO")
    find_tool("xorriso", "xorriso", why="grub-mkrescue writes the ISO with it")
    find_tool("mformat", "mtools", why="grub-mkrescue makes the ISO's EFI image with it")
    for platform, package in (("i386-pc", "grub-pc-bin"), ("x86_64-efi", "grub-efi-amd64-bin")):
        if not Path(f"/usr/lib/grub/{platform}").is_dir():
            raise InstallerIsoError(
                f"GRUB for {platform} is not installed: the ISO boots with BIOS and UEFI",
                hint=f"install it with: apt-get install {package}",
            )
    tmp = output.with_name(f"{TMP_PREFIX}{output.name}.{uuid_mod.uuid4().hex[:8]}")
    try:
        run([mkrescue, "-o", tmp, tree, "--", "-volid", VOLUME_ID,
             "-append_partition", "3", "0x83", root_image])  # fmt: skip
        tmp.rename(output)
    finally:
        tmp.unlink(missing_ok=True)


def _stage(workdir: Path | None, output: Path) -> Path:
    parent = workdir or output.parent
    try:
        return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}iso-", dir=parent))
    except OSError as exc:
        raise InstallerIsoError(
            f"{parent}: cannot make a staging directory ({exc.strerror})"
        ) from None


def make_iso(
    output: Path,
    source: ImageName,
    config_text: str,
    *,
    config_source: str = "install.toml",
    kargs: tuple[str, ...] = (),
    workdir: Path | None = None,
    ctx: SystemContext | None = None,
    progress: ProgressSink | None = None,
) -> IsoResult:
    """``atoll disk-image --type iso``: an installer ISO for *source* that
    installs as *config_text* says.  *kargs* are the installer's own kernel
    arguments (the installed system's are in the config)."""
    config = parse_config(config_text, config_source)
    if not any(k.startswith("console=") for k in kargs):
        kargs = (*VM_CONSOLE_KARGS, *kargs)
    staging = _stage(workdir, output)
    try:
        device = Device(staging / "sysroot", ctx, progress=progress)
        try:
            installed = device.install(source)
        except NoKernelError as exc:
            raise NotBootableError(
                f"{source}: no kernel (usr/lib/modules/KVER/vmlinuz): it cannot boot a machine",
                hint="install a kernel in the image (Debian: linux-image-amd64)",
            ) from exc
        root, kver = check_bootable(device, str(source))
        _check_tools(root, config, str(source))
        tree = staging / "iso"
        (tree / "boot/grub").mkdir(parents=True)
        (tree / "atoll").mkdir()
        modules = root / "usr/lib/modules" / kver
        shutil.copyfile(modules / "vmlinuz", tree / "boot/vmlinuz")
        shutil.copyfile(modules / "initramfs.img", tree / "boot/initrd.img")
        installer = root / INSTALLER_DIR
        installer.mkdir()
        (installer / "init").write_text(INIT_SCRIPT)
        (installer / "init").chmod(0o755)
        (installer / "install.toml").write_text(config_text)
        if config.embedded:
            from atoll.oci.imagecopy import copy_image

            archive = parse_bootc_name(f"oci-archive:{installer / EMBEDDED_ARCHIVE}")
            copy_image(source, archive, src_ctx=ctx, progress=progress)
        root_uuid = str(uuid_mod.uuid4())
        root_image = staging / "root.img"
        content, inodes = _tree_usage(root)
        size = (int(content * 1.15) + inodes * 512 + 64 * MIB) // MIB * MIB
        with root_image.open("xb") as fh:
            fh.truncate(size)
        make_ext4(root_image, root, offset=0, size=size, uuid=root_uuid, label=ROOT_LABEL,
                  inodes=max(inodes * 2, 16384))  # fmt: skip
        remove_tree(staging / "sysroot")
        image = installed.image
        meta = {
            "version": VERSION,
            "rootUuid": root_uuid,
            "kernelArgs": list(kargs),
            "kernel": kver,
            "image": str(source),
            "imageDigest": str(image.digest),
            "imageVersion": image.version,
            "embedded": config.embedded,
        }
        _write_tree_meta(tree, meta, config_text)
        _write_iso(tree, root_image, output)
        return IsoResult(
            target=output,
            image=str(source),
            digest=str(image.digest),
            version=image.version,
            kernel=kver,
            size=output.stat().st_size,
            root_uuid=root_uuid,
            embedded=config.embedded,
            kargs=list(kargs),
        )
    finally:
        remove_tree(staging)


def _write_tree_meta(tree: Path, meta: dict[str, Any], config_text: str) -> None:
    title = str(meta["image"]) + (f" {meta['imageVersion']}" if meta.get("imageVersion") else "")
    (tree / "boot/grub/grub.cfg").write_text(
        _grub_cfg(str(meta["rootUuid"]), list(meta["kernelArgs"]), title)
    )
    (tree / "atoll/iso.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tree / "atoll/install.toml").write_text(config_text)


def read_iso_meta(iso: Path, dest: Path) -> dict[str, Any]:
    """Extract the ISO 9660 tree of the atoll ISO *iso* into *dest*; its iso.json."""
    xorriso = find_tool("xorriso", "xorriso", why="it reads the ISO")
    if not iso.is_file():
        raise InstallerIsoError(f"{iso}: no such file")
    run([xorriso, "-osirrox", "on", "-indev", iso, "-extract", "/boot", dest / "boot",
         "-extract", "/atoll", dest / "atoll"], check=False)  # fmt: skip
    try:
        meta = json.loads((dest / "atoll/iso.json").read_text())
    except (OSError, ValueError):
        raise InstallerIsoError(
            f"{iso}: not an atoll installer ISO (no readable /atoll/iso.json)",
            hint="make one with atoll disk-image --type iso IMAGE --config install.toml",
        ) from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise InstallerIsoError(f"{iso}: an atoll ISO of a version this atoll does not know")
    for path in (dest / "boot", dest / "atoll"):  # xorriso extracts read-only
        for p in [path, *path.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return meta


def _root_partition(iso: Path, root_uuid: str) -> tuple[int, int]:
    """(offset, size) of the ISO's partition holding the ext4 file system *root_uuid*."""
    sfdisk = find_tool("sfdisk", "fdisk")
    table = json.loads(run([sfdisk, "--json", iso]).stdout)
    want = uuid_mod.UUID(root_uuid).bytes
    with iso.open("rb") as fh:
        for part in table["partitiontable"].get("partitions", []):
            offset, size = int(part["start"]) * 512, int(part["size"]) * 512
            fh.seek(offset + 1024)
            block = fh.read(0x78)
            if len(block) == 0x78 and block[0x38:0x3A] == b"\x53\xef" and block[0x68:0x78] == want:
                return offset, size
    raise InstallerIsoError(f"{iso}: no installer file system (UUID {root_uuid}) on it")


def customize_iso(
    iso: Path, config_text: str, output: Path, *, config_source: str = "install.toml",
    workdir: Path | None = None,
) -> IsoResult:  # fmt: skip
    """``atoll iso customize``: *iso* with its install config replaced, as *output*."""
    config = parse_config(config_text, config_source)
    debugfs = find_tool("debugfs", "e2fsprogs", why="it replaces the config without mounting")
    staging = _stage(workdir, output)
    try:
        tree = staging / "iso"
        tree.mkdir()
        meta = read_iso_meta(iso, tree)
        if config.embedded and not meta.get("embedded"):
            raise InstallerIsoError(
                f'{config_source}: source = "embedded", and {iso} carries no image',
                hint="give [image] source as an image reference, or make the ISO anew "
                "with an embedded config",
            )
        offset, size = _root_partition(iso, str(meta["rootUuid"]))
        root_image = staging / "root.img"
        with iso.open("rb") as src, root_image.open("wb") as dst:
            src.seek(offset)
            left = size
            while left:
                chunk = src.read(min(left, 4 * MIB))
                if not chunk:
                    raise InstallerIsoError(f"{iso}: cut short inside its installer partition")
                dst.write(chunk)
                left -= len(chunk)
        new = staging / "install.toml"
        new.write_text(config_text)
        commands = (
            f'cd /{INSTALLER_DIR}\nrm install.toml\nwrite "{new}" install.toml\n'
            "set_inode_field install.toml mode 0100644\n"
        )
        script = staging / "debugfs.cmds"
        script.write_text(commands)
        result = run([debugfs, "-w", "-f", script, root_image])
        if b"rror" in result.stderr or b"not found" in result.stderr:
            raise InstallerIsoError(
                f"{iso}: cannot replace the install config: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        _write_tree_meta(tree, meta, config_text)
        _write_iso(tree, root_image, output)
        return IsoResult(
            target=output,
            image=str(meta.get("image")),
            digest=str(meta.get("imageDigest")),
            version=meta.get("imageVersion"),
            kernel=str(meta.get("kernel")),
            size=output.stat().st_size,
            root_uuid=str(meta["rootUuid"]),
            embedded=bool(meta.get("embedded")),
            kargs=list(meta["kernelArgs"]),
        )
    finally:
        remove_tree(staging)
