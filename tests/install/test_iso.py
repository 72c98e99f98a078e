"""The installer ISO (atoll.install.iso) and installs from an install config
(atoll.install.installer), read back without mounting or booting anything: the
ISO's partitions with ``sfdisk``, its ISO 9660 files with ``xorriso``, the
installer's ext4 partition and the installed disk with ``debugfs``.  The ISO
booting a machine and installing it is tested in tests/device/test_vm.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atoll.boot import install_early_boot
from atoll.build.esp import GRUB_EFI_DIR
from atoll.build.partition import GRUB_MODULES_DIR
from atoll.fsutil import TMP_PREFIX
from atoll.install.iso import _TOOLS
from helpers.cli import run_atoll
from helpers.osimage import FileSpec, Spec, build_os_image, tree_spec
from helpers.parts import missing, require_tool

CONFIG = """\
version = 1
hostname = "edge-07"

[image]
source = "embedded"
track = "registry.example.com/os/edge:stable"

[disk]
min-size = "1G"

[[user]]
name = "ops"
ssh-authorized-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops@example"]
"""
REJECT_ALL = """\
[signature]
policy = '''{"default": [{"type": "reject"}]}'''
"""


@pytest.fixture(autouse=True)
def tools() -> None:
    for tool, package in (
        ("sfdisk", "fdisk"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("grub-mkrescue", "grub-common"),
        ("xorriso", "xorriso"),
        ("mformat", "mtools"),
        ("mkfs.fat", "dosfstools"),
    ):
        require_tool(tool, package)
    if not (GRUB_MODULES_DIR / "boot.img").is_file() or not (GRUB_EFI_DIR / "linux.mod").is_file():
        missing("GRUB for BIOS and UEFI is not installed (grub-pc-bin, grub-efi-amd64-bin)")


def installer_tools() -> Spec:
    """Stand-ins for what the installer runs inside the image (never run here)."""
    return {paths[0]: FileSpec(b"#!/bin/sh\n", 0o755) for group in _TOOLS.values()
            for paths, _ in group}  # fmt: skip


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """1: bootable and carrying the installer's tools; notools: bootable only."""
    stage = tmp_path / "stage"
    install_early_boot(stage)
    hook = tree_spec(stage)
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0", add={**hook, **installer_tools()})
    build_os_image(layout, "notools", version="1.0", add=hook)
    return layout


def atoll(*args: str, code: int = 0) -> Any:
    proc = run_atoll(*args)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout) if code == 0 and "--json" in args else proc


def partitions(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, check=True)
    parts: list[dict[str, Any]] = json.loads(out.stdout)["partitiontable"]["partitions"]
    return parts


def installer_file(iso: Path, path: str) -> str:
    """A file of the ISO's installer partition (the ext4 one)."""
    offsets = [int(p["start"]) * 512 for p in partitions(iso)]
    for offset in offsets:
        proc = subprocess.run(
            ["debugfs", "-R", f"cat {path}", f"{iso}?offset={offset}"],
            capture_output=True,
            check=False,
            encoding="utf-8",
            errors="replace",
        )
        if proc.returncode == 0 and "Bad magic" not in proc.stderr:
            return proc.stdout
    raise AssertionError(f"{iso}: no ext4 partition holds {path}")


def iso_files(iso: Path, dest: Path) -> Path:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)],
        capture_output=True,
        check=True,
    )
    return dest


def test_an_iso_carries_the_image_the_installer_and_the_config(
    images: Path, tmp_path: Path
) -> None:
    config = tmp_path / "install.toml"
    config.write_text(CONFIG)
    iso = tmp_path / "out" / "installer.iso"
    iso.parent.mkdir()
    doc = atoll("--json", "disk-image", "--type", "iso", f"oci:{images}:1", "--config",
                str(config), "-o", str(iso), "--karg", "quiet")  # fmt: skip
    assert doc["type"] == "iso" and doc["embedded"] is True and doc["version"] == "1.0"
    assert doc["kargs"] == ["console=tty0", "console=ttyS0,115200", "quiet"]
    assert sorted(p.name for p in iso.parent.iterdir()) == ["installer.iso"]  # no staging left
    # A hybrid ISO: an MBR/GPT with the EFI image and the installer's ext4 partition.
    types = [p["type"] for p in partitions(iso)]
    assert "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in types  # EFI System
    tree = iso_files(iso, tmp_path / "tree")
    meta = json.loads((tree / "atoll/iso.json").read_text())
    assert meta["rootUuid"] == doc["installerRootUuid"] and meta["embedded"] is True
    grub = (tree / "boot/grub/grub.cfg").read_text()
    assert f"root=UUID={meta['rootUuid']} ro init=/atoll-installer/init" in grub
    assert (tree / "boot/vmlinuz").read_bytes() == b"KERNEL 1.0"
    assert (tree / "boot/initrd.img").read_bytes() == b"INITRAMFS 1.0"
    assert installer_file(iso, "/atoll-installer/install.toml") == CONFIG
    assert "atoll install to-disk --config" in installer_file(iso, "/atoll-installer/init")
    assert installer_file(iso, "/usr/lib/os-release").startswith('NAME="atoll test"')
    archive = installer_file(iso, "/atoll-installer/image.tar")
    assert "oci-layout" in archive[:100_000]

    # Another config, as mkksiso does: the image and installer stay, the config changes.
    other = tmp_path / "other.toml"
    other.write_text(CONFIG.replace("edge-07", "edge-08"))
    out = tmp_path / "custom.iso"
    custom = atoll("--json", "iso", "customize", str(iso), "--config", str(other), "-o", str(out))
    assert custom["installerRootUuid"] == meta["rootUuid"]
    assert custom["imageDigest"] == doc["imageDigest"]
    assert installer_file(out, "/atoll-installer/install.toml") == other.read_text()
    assert "edge-08" in (iso_files(out, tmp_path / "tree2") / "atoll/install.toml").read_text()
    assert installer_file(iso, "/atoll-installer/install.toml") == CONFIG  # the input unchanged

    # Config errors are caught here, not at install time, and nothing is written.
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace('min-size = "1G"', 'min-size = "big"'))
    proc = atoll("iso", "customize", str(iso), "--config", str(bad), "-o", str(tmp_path / "x.iso"),
                 code=111)  # fmt: skip
    assert "bad.toml: line 9: disk.min-size: 'big' is not a size" in proc.stderr
    assert not (tmp_path / "x.iso").exists()
    # A registry config needs no image on the ISO; "embedded" on an ISO without one is refused.
    net = tmp_path / "net.toml"
    net.write_text(CONFIG.replace('source = "embedded"', 'source = "registry.example.com/os:1"'))
    net_iso = tmp_path / "net.iso"
    atoll("iso", "customize", str(out), "--config", str(net), "-o", str(net_iso))
    assert installer_file(net_iso, "/atoll-installer/install.toml") == net.read_text()


def test_bad_input_to_disk_image_iso_is_refused_before_any_work(
    images: Path, tmp_path: Path
) -> None:
    config = tmp_path / "install.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out.iso"
    proc = atoll("disk-image", "--type", "iso", f"oci:{images}:notools", "--config", str(config),
                 "-o", str(out), code=113)  # fmt: skip
    assert "the image lacks /usr/bin/python3, /usr/bin/atoll, /usr/sbin/sfdisk" in proc.stderr
    assert "fdisk" in proc.stderr and "grub-efi-amd64-bin" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[image]\n")
    proc = atoll("disk-image", "--type", "iso", f"oci:{images}:1", "--config", str(bad),
                 "-o", str(out), code=111)  # fmt: skip
    assert "bad.toml: line 2: image.source: missing" in proc.stderr
    proc = atoll("disk-image", "--type", "iso", f"oci:{images}:1", "-o", str(out), code=2)
    assert "needs --config FILE" in proc.stderr
    proc = atoll("disk-image", "--type", "iso", f"oci:{images}:1", "--config", str(config),
                 "--boot", "bios", "-o", str(out), code=2)  # fmt: skip
    assert "--boot does not go with --config" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(f"{TMP_PREFIX}*"))
    proc = atoll("iso", "customize", str(config), "--config", str(config), "-o", str(out),
                 code=113)  # fmt: skip
    assert "not an atoll installer ISO" in proc.stderr


def test_an_install_from_a_config_writes_its_host_name_users_and_tracked_image(
    images: Path, tmp_path: Path
) -> None:
    config = tmp_path / "install.toml"
    config.write_text(CONFIG.replace('source = "embedded"', f'source = "oci:{images}:1"'))
    disk = tmp_path / "disk.raw"
    doc = atoll("--json", "install", "to-disk", str(disk), "--config", str(config))
    stateroot, ident = doc["deployment"].split("/")
    root = f"/atoll/deploy/{stateroot}/deploy/{ident}"

    def read(path: str) -> str:
        return subprocess.run(
            ["debugfs", "-R", f"cat {path}", f"{disk}?offset={doc['partition']['offset']}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    assert read(f"{root}/etc/hostname") == "edge-07\n"
    assert read(f"{root}/etc/sysusers.d/atoll-install.conf").endswith(
        'u ops - "ops" /home/ops /bin/sh\n'
    )
    tmpfiles = read(f"{root}/etc/tmpfiles.d/atoll-install-users.conf")
    assert "f~ /home/ops/.ssh/authorized_keys 0600 ops ops - c3NoLWVkMjU1MTkg" in tmpfiles
    origin = read(f"{root}.origin")
    assert "registry.example.com/os/edge:stable" in origin


def test_the_installer_refuses_before_writing_anything(images: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    # An image the config's signature policy refuses.
    config = tmp_path / "install.toml"
    config.write_text(
        CONFIG.replace('source = "embedded"', f'source = "oci:{images}:1"') + REJECT_ALL
    )
    proc = atoll("install", "to-disk", str(disk), "--config", str(config), code=64)
    assert "rejected" in proc.stderr
    # "embedded", with no image beside the config.
    config.write_text(CONFIG)
    proc = atoll("install", "to-disk", str(disk), "--config", str(config), code=111)
    assert "no image archive beside it" in proc.stderr
    # A config that does not parse.
    config.write_text("version = 1\n[image]\nsource = \n")
    proc = atoll("install", "to-disk", str(disk), "--config", str(config), code=111)
    assert "install.toml: not TOML" in proc.stderr
    assert not disk.exists() and not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_config_files_are_never_written_through_a_symlink_the_image_ships(tmp_path: Path) -> None:
    from atoll.build.disk import _write_file
    from atoll.errors import DiskError

    outside = tmp_path / "host-etc"
    outside.mkdir()
    deployment = tmp_path / "deployment"
    (deployment / "etc").mkdir(parents=True)
    (deployment / "etc/containers").symlink_to(outside)
    with pytest.raises(DiskError, match="/etc/containers is a symlink in the image"):
        _write_file(deployment, "etc/containers/policy.json", b"{}")
    assert list(outside.iterdir()) == []
    (deployment / "etc/hostname").symlink_to(outside / "hostname")
    _write_file(deployment, "etc/hostname", b"edge\n")  # the link is replaced, not followed
    assert (deployment / "etc/hostname").read_text() == "edge\n"
    assert not (outside / "hostname").exists()
