"""Disks from bootable images: ``atoll install to-disk`` and ``atoll disk-image``.

The disks are read back without mounting them: the partition table with
``sfdisk --json``, the file system with ``debugfs``, GRUB's boot code byte by
byte against grub-pc-bin's images.  A disk that boots is tested in
tests/device/test_vm.py."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atoll.boot import install_early_boot
from atoll.build.disklayout import parse_size
from atoll.build.esp import GRUB_EFI_DIR, REMOVABLE_PATH, read_esp_file
from atoll.build.partition import (
    BIOS_BOOT_TYPE,
    BLOCKLIST_START_OFFSET,
    ESP_TYPE,
    GRUB_MODULES_DIR,
    KERNEL_SECTOR_OFFSET,
    MBR_CODE_END,
    ROOT_TYPE_X86_64,
)
from atoll.errors import InvalidInputError
from helpers.cli import run_atoll
from helpers.osimage import KVER, build_os_image, tree_spec
from helpers.parts import missing, require_tool

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def tools() -> None:
    for tool, package in (
        ("sfdisk", "fdisk"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("grub-mkimage", "grub-common"),
        ("mkfs.fat", "dosfstools"),
        ("mtype", "mtools"),
    ):
        require_tool(tool, package)
    if not (GRUB_MODULES_DIR / "boot.img").is_file():
        missing("GRUB for BIOS is not installed (apt-get install grub-pc-bin)")
    if not (GRUB_EFI_DIR / "linux.mod").is_file():
        missing("GRUB for UEFI is not installed (apt-get install grub-efi-amd64-bin)")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """1: bootable (fake kernel and initramfs, the early-boot hook); nokernel,
    noinitramfs, nohook: each lacks one thing."""
    stage = tmp_path / "stage"
    install_early_boot(stage)
    hook = tree_spec(stage)
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0", add=hook)
    build_os_image(layout, "nokernel", version="1.0", add=hook, kernel=False)
    build_os_image(
        layout,
        "noinitramfs",
        version="1.0",
        add={**hook, f"usr/lib/modules/{KVER}/initramfs.img": None},
    )
    build_os_image(layout, "nohook", version="1.0")
    return layout


def atoll(*args: str, code: int = 0) -> Any:
    proc = run_atoll(*args)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout) if code == 0 and "--json" in args else proc


def debugfs(disk: Path, request: str, offset: int) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, f"{disk}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def check_boot_code(disk: Path, core_sector: int) -> None:
    """boot.img in sector 0 pointing at core.img, whose block list follows it."""
    with disk.open("rb") as fh:
        mbr = fh.read(512)
        fh.seek(core_sector * 512)
        core_start = fh.read(512)
    boot = (GRUB_MODULES_DIR / "boot.img").read_bytes()
    assert mbr[:KERNEL_SECTOR_OFFSET] == boot[:KERNEL_SECTOR_OFFSET]
    assert struct.unpack_from("<Q", mbr, KERNEL_SECTOR_OFFSET)[0] == core_sector
    assert (
        mbr[KERNEL_SECTOR_OFFSET + 8 : MBR_CODE_END]
        == boot[KERNEL_SECTOR_OFFSET + 8 : MBR_CODE_END]
    )
    assert mbr[510:] == b"\x55\xaa"
    diskboot = (GRUB_MODULES_DIR / "diskboot.img").read_bytes()
    assert core_start[:0x100] == diskboot[:0x100]  # core.img begins with diskboot.img
    assert struct.unpack_from("<Q", core_start, BLOCKLIST_START_OFFSET)[0] == core_sector + 1


def check_disk(disk: Path, doc: dict[str, Any]) -> None:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    parts = table["partitions"]
    root = parts[-1]
    data = len(doc["partitions"])  # --layout's, between the boot partitions and the root
    assert root["start"] * 512 == doc["partition"]["offset"]
    assert root["size"] * 512 == doc["partition"]["size"]
    if doc["boot"] == "bios":
        assert table["label"] == "dos" and len(parts) == 1 and doc["esp"] is None
        assert root["start"] == 2048 and root["type"] == "83" and root.get("bootable")
        check_boot_code(disk, 1)
    else:
        assert table["label"] == "gpt" and root["type"] == ROOT_TYPE_X86_64
        esp = parts[-2 - data]
        assert esp["type"] == ESP_TYPE and esp["start"] * 512 == doc["esp"]["offset"]
        efi = read_esp_file(disk, doc["esp"]["offset"], REMOVABLE_PATH)
        assert efi[:2] == b"MZ"  # a PE image...
        (pe,) = struct.unpack_from("<I", efi, 0x3C)
        assert efi[pe : pe + 4] == b"PE\0\0"
        assert struct.unpack_from("<H", efi, pe + 4)[0] == 0x8664  # ...for x86-64
        # Its embedded configuration finds the root file system by its UUID.
        assert f"search.fs_uuid {doc['filesystem']['uuid']} root".encode() in efi
        if doc["boot"] == "hybrid":
            bios = parts[0]
            assert len(parts) == 3 + data and bios["type"] == BIOS_BOOT_TYPE
            check_boot_code(disk, bios["start"])
        else:
            assert len(parts) == 2 + data
            with disk.open("rb") as fh:
                assert fh.read(440) == bytes(440)  # no BIOS boot code
    offset = doc["partition"]["offset"]
    stats = debugfs(disk, "stats", offset)
    assert f"Filesystem UUID:          {doc['filesystem']['uuid']}" in stats
    assert "Filesystem volume name:   atoll-root" in stats
    cfg = debugfs(disk, "cat /boot/grub/grub.cfg", offset)
    assert f"root=UUID={doc['filesystem']['uuid']}" in cfg
    stateroot, ident = doc["deployment"].split("/")
    assert f"atoll=/atoll/deploy/{stateroot}/deploy/{ident}" in cfg
    assert cfg.count("menuentry ") == 1
    assert len(debugfs(disk, "cat /boot/grub/grubenv", offset)) == 1024
    # The machine flushes its boot files for GRUB after each update (bootloader.flush).
    assert json.loads(debugfs(disk, "cat /boot/grub/atoll.json", offset))["flushAfterWrite"] is True
    assert '"version": 1' in debugfs(disk, "cat /atoll/sysroot.json", offset)


@pytest.mark.parametrize("boot", ["uefi", "bios", "hybrid"])
def test_to_disk_makes_a_partitioned_bootable_raw_file(
    images: Path, tmp_path: Path, boot: str
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE+test test@example\n")
    disk = tmp_path / "out" / "disk.raw"
    disk.parent.mkdir()
    doc = atoll(
        "install", "to-disk", str(disk), "--source", f"oci:{images}:1", "--size", "256M",
        "--karg", "console=ttyS0,115200", "--root-ssh-authorized-keys", str(keys), "--json",
        *(["--boot", boot] if boot != "uefi" else []),  # uefi: the default
    )  # fmt: skip
    assert doc["boot"] == boot
    assert doc["size"] == disk.stat().st_size == 256 * MIB
    assert doc["kernel"] == KVER and doc["version"] == "1.0"
    assert doc["kargs"][:2] == ["rw", f"root=UUID={doc['filesystem']['uuid']}"]
    assert "console=ttyS0,115200" in doc["kargs"]
    check_disk(disk, doc)
    offset = doc["partition"]["offset"]
    assert "serial --unit=0 --speed=115200" in debugfs(disk, "cat /boot/grub/grub.cfg", offset)
    stateroot, ident = doc["deployment"].split("/")
    ssh = debugfs(
        disk,
        f"cat /atoll/deploy/{stateroot}/deploy/{ident}/etc/tmpfiles.d/atoll-root-ssh.conf",
        offset,
    )
    assert "f~ /root/.ssh/authorized_keys 0600 root root - c3NoLWVkMjU1MTkg" in ssh
    # First boot grows the root partition and file system to the disk (atoll.build.growfs).
    etc = f"/atoll/deploy/{stateroot}/deploy/{ident}/etc"
    assert "Type=root" in debugfs(disk, f"cat {etc}/repart.d/50-atoll-root.conf", offset)
    unit = debugfs(disk, f"cat {etc}/systemd/system/atoll-growfs.service", offset)
    assert "ExecStart=/lib/systemd/systemd-growfs /sysroot" in unit
    wants = debugfs(disk, f"stat {etc}/systemd/system/multi-user.target.wants", offset)
    assert "Type: directory" in wants
    link = f"{etc}/systemd/system/multi-user.target.wants/atoll-growfs.service"
    assert 'Fast link dest: "../atoll-growfs.service"' in debugfs(disk, f"stat {link}", offset)
    assert sorted(p.name for p in disk.parent.iterdir()) == ["disk.raw"]  # no staging left


@pytest.mark.parametrize("kind", ["qcow2", "vmdk", "vhdx"])
def test_disk_image_formats(images: Path, tmp_path: Path, kind: str) -> None:
    """Each format, converted back to raw by qemu-img, is the disk atoll makes."""
    qemu_img = require_tool("qemu-img", "qemu-utils")
    out = tmp_path / f"os.{kind}"
    doc = atoll("disk-image", f"oci:{images}:1", "--type", kind, "-o", str(out), "--json")
    assert doc["type"] == kind and doc["target"] == str(out) and doc["boot"] == "uefi"
    assert "console=ttyS0,115200" in doc["kargs"] and "console=tty0" in doc["kargs"]
    info = json.loads(
        subprocess.run(
            [qemu_img, "info", "--output", "json", str(out)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == kind and info["virtual-size"] == doc["size"]
    if kind == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    raw = tmp_path / "back.raw"
    subprocess.run([qemu_img, "convert", "-O", "raw", str(out), str(raw)], check=True)
    check_disk(raw, doc)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [
        "back.raw",
        "images",
        f"os.{kind}",
        "stage",
    ]


def test_to_disk_with_an_xfs_root(images: Path, tmp_path: Path) -> None:
    """--rootfs xfs: the same disk with XFS in the root partition, which both
    GRUBs (core.img for BIOS, BOOTX64.EFI) carry the driver for."""
    require_tool("mkfs.xfs", "xfsprogs")
    fstest = require_tool("grub-fstest", "grub-common")
    disk = tmp_path / "disk.raw"
    doc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1", "--size", "512M",
                "--rootfs", "xfs", "--boot", "hybrid", "--json")  # fmt: skip
    assert doc["filesystem"]["type"] == "xfs"
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout
    )["partitiontable"]
    root = table["partitions"][-1]
    assert root["start"] * 512 == doc["partition"]["offset"] and root["type"] == ROOT_TYPE_X86_64
    check_boot_code(disk, table["partitions"][0]["start"])
    efi = read_esp_file(disk, doc["esp"]["offset"], REMOVABLE_PATH)
    assert b"xfs" in efi
    # GRUB's own XFS driver finds the file system and reads its grub.cfg.
    part = f"(loop0,gpt{len(table['partitions'])})"

    def grub(*args: str) -> str:
        return subprocess.run(
            [fstest, str(disk), *args], capture_output=True, text=True, check=True
        ).stdout

    found = grub("ls", part)
    assert "Filesystem type xfs - Label `atoll-root'" in found
    assert f"UUID {doc['filesystem']['uuid']}" in found
    cfg = grub("cat", f"{part}/boot/grub/grub.cfg")
    assert f"root=UUID={doc['filesystem']['uuid']}" in cfg
    assert len(grub("cat", f"{part}/boot/grub/grubenv")) == 1024
    stateroot, ident = doc["deployment"].split("/")
    etc = f"{part}/atoll/deploy/{stateroot}/deploy/{ident}/etc"
    assert "Type=root" in grub("cat", f"{etc}/repart.d/50-atoll-root.conf")
    # A name a prototype file cannot carry is refused before the disk is touched.
    stage = tmp_path / "hook"
    install_early_boot(stage)
    spaced = {**tree_spec(stage), "usr/share/doc/read me": "x"}
    build_os_image(images, "spaced", version="1.0", add=spaced)  # type: ignore[arg-type]
    before = disk.read_bytes()[: 1 << 20]
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:spaced",
                 "--rootfs", "xfs", code=72)  # fmt: skip
    assert "/usr/share/doc/read me: 'read me' cannot be written" in proc.stderr
    assert disk.read_bytes()[: 1 << 20] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "disk.raw", "home", "hook", "images", "stage"]  # fmt: skip


def test_to_disk_with_var_on_its_own_partition(images: Path, tmp_path: Path) -> None:
    """--layout: /var on a partition of its own, between the ESP and the root,
    holding what the image's /var had, mounted through the deployment's fstab."""
    layout = tmp_path / "layout.toml"
    layout.write_text('[[partition]]\nmount = "/var"\nsize = "96M"\n')
    disk = tmp_path / "disk.raw"
    doc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1", "--size", "400M",
                "--layout", str(layout), "--json")  # fmt: skip
    check_disk(disk, doc)  # the boot partitions and the root, as without a layout
    (var,) = doc["partitions"]
    assert var["mount"] == "/var" and var["size"] == 96 * MIB
    assert var["filesystem"]["type"] == "ext4"
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout
    )["partitiontable"]
    types = [p["type"] for p in table["partitions"]]
    assert types == [ESP_TYPE, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", ROOT_TYPE_X86_64]
    assert table["partitions"][1]["start"] * 512 == var["offset"]
    assert debugfs(disk, "cat /lib/app/seed", var["offset"]) == "seeded at install\n"
    assert "atoll-root" not in debugfs(disk, "stats", var["offset"])
    root = doc["partition"]["offset"]
    # On the root file system the stateroot's /var is the empty mount point.
    listing = debugfs(disk, "ls -p /atoll/deploy/default/var", root).split()
    assert sorted(entry.split("/")[5] for entry in listing) == [".", ".."]
    stateroot, ident = doc["deployment"].split("/")
    fstab = debugfs(disk, f"cat /atoll/deploy/{stateroot}/deploy/{ident}/etc/fstab", root)
    uuid = var["filesystem"]["uuid"]
    assert f"UUID={uuid} /var ext4 defaults 0 2" in fstab
    assert f"UUID={uuid} /sysroot/atoll/deploy/default/var ext4 defaults 0 0" in fstab
    # Too small for what the image has there, or at odds with --rootfs: refused.
    layout.write_text('[root]\nfilesystem = "xfs"\n')
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1",
                 "--layout", str(layout), "--rootfs", "ext4", code=4)  # fmt: skip
    assert "--rootfs ext4 and" in proc.stderr and "disagree" in proc.stderr
    layout.write_text('[[partition]]\nmount = "/var"\nsize = "1K"\n')
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1",
                 "--layout", str(layout), code=72)  # fmt: skip
    assert "the partition for /var: 0 MiB is too small" in proc.stderr


def test_disk_image_ami(images: Path, tmp_path: Path) -> None:
    """An AMI: raw, whole GiB (as an EBS volume), both boot paths by default."""
    out = tmp_path / "os.ami"
    doc = atoll("disk-image", f"oci:{images}:1", "--type", "ami", "--size", "1100M",
                "-o", str(out), "--json")  # fmt: skip
    assert doc["type"] == "ami" and doc["boot"] == "hybrid"
    assert doc["size"] == out.stat().st_size == 2 << 30  # 1100 MiB, rounded up
    check_disk(out, doc)


def test_to_disk_on_a_block_device(images: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("a loop device needs root")
    backing = tmp_path / "backing.img"
    with backing.open("wb") as fh:
        fh.truncate(300 * MIB)
    proc = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        missing(f"no loop device: {proc.stderr.strip()}")
    device = proc.stdout.strip()
    try:
        doc = atoll(
            "install", "to-disk", device, "--source", f"oci:{images}:1",
            "--workdir", str(tmp_path / "work"), "--json",
        )  # fmt: skip
        assert doc["size"] == 300 * MIB  # the whole device
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    check_disk(backing, doc)
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nokernel", "no kernel (usr/lib/modules/KVER/vmlinuz)"),
        ("noinitramfs", f"kernel {KVER} has no initramfs"),
        ("nohook", "no atoll early-boot hook"),
    ],
)
def test_an_image_that_cannot_boot_is_refused(
    images: Path, tmp_path: Path, ref: str, message: str
) -> None:
    disk = tmp_path / "out" / "disk.raw"
    disk.parent.mkdir()
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:{ref}", code=70)
    assert message in proc.stderr
    assert proc.stderr.count("\n") <= 2  # one line, and a hint
    assert list(disk.parent.iterdir()) == []  # nothing left behind


def test_secure_boot_refuses_an_unsigned_kernel_and_a_bios_disk(
    images: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "out" / "disk.raw"
    disk.parent.mkdir()
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1",
                 "--secure-boot", code=70)  # fmt: skip
    assert f"kernel /{KVER}/vmlinuz: not an EFI binary (no MZ header)" in proc.stderr
    assert "cannot boot with Secure Boot on" in proc.stderr
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1",
                 "--secure-boot", "--boot", "bios", code=4)  # fmt: skip
    assert "--secure-boot needs a UEFI disk" in proc.stderr
    assert list(disk.parent.iterdir()) == []


def test_a_size_too_small_is_refused(images: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    proc = atoll("install", "to-disk", str(disk), "--source", f"oci:{images}:1", "--size", "1M",
                 code=72)  # fmt: skip
    assert "too small" in proc.stderr and not disk.exists()


@pytest.mark.parametrize(
    ("text", "size"), [("4G", 4 << 30), ("512M", 512 << 20), ("1024", 1024), ("1.5GiB", 3 << 29)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "-1G", "0"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_size(text)
