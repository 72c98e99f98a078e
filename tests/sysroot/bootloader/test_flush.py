"""Boot files put where GRUB reads them: in the file system, not only in its journal.

GRUB reads ext4 without replaying the journal; ``debugfs`` does the same, so
here it plays GRUB's part, reading a loop-mounted ext4 image's file behind the
kernel's back.  The freeze and thaw run on that loop file system only, never
on one of the host's (atoll itself does them only on a machine booted with
``atoll=``, which the tests stand in for with a command line file)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.errors import BootloaderError
from atoll.oci.transports import ImageName
from atoll.sysroot.bootloader import flush
from atoll.sysroot.bootloader.grub import GrubSettings, install_grub_config
from atoll.sysroot.bootloader.grubenv import read_grubenv
from atoll.sysroot.lifecycle import Device
from helpers.parts import missing, require_tool


@pytest.mark.parametrize(
    ("cmdline", "booted"),
    [
        ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet", False),
        ("root=UUID=1 atoll=/atoll/deploy/default/deploy/abc.0 rw", True),
        ("root=UUID=1 -- atoll=/atoll/deploy/default/deploy/abc.0", False),  # for init
    ],
)
def test_only_a_kernel_booted_by_atoll_flushes(tmp_path: Path, cmdline: str, booted: bool) -> None:
    path = tmp_path / "cmdline"
    path.write_text(cmdline + "\n")
    assert flush.booted_by_atoll(path) is booted
    assert flush.should_flush(True, path) is booted
    assert flush.should_flush(False, path) is False
    assert flush.booted_by_atoll(tmp_path / "absent") is False


def test_the_setting_reads_back_and_defaults_to_off() -> None:
    on = GrubSettings(flush_after_write=True)
    assert GrubSettings.from_json(on.to_json(), "atoll.json") == on
    old = {"version": 1, "bootPrefix": "/boot", "timeout": 0}  # written before the setting
    assert GrubSettings.from_json(old, "atoll.json").flush_after_write is False
    with pytest.raises(BootloaderError, match="flushAfterWrite"):
        GrubSettings.from_json({**old, "flushAfterWrite": "yes"}, "atoll.json")


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 192 MiB ext4 image, loop-mounted: (image, mount point)."""
    if os.geteuid() != 0:
        missing("mounting a loop device needs root")
    require_tool("mkfs.ext4", "e2fsprogs")
    require_tool("debugfs", "e2fsprogs")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "mnt"
    mountpoint.mkdir()
    with image.open("wb") as fh:
        fh.truncate(192 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    proc = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        missing(f"cannot loop-mount an ext4 image here: {proc.stderr.strip()}")
    try:
        yield image, mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def unreplayed(image: Path, path: str) -> bytes:
    """A file as GRUB would read it: from the file system's blocks, no journal replay."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=False
    )
    return proc.stdout


def test_finalize_on_a_managed_disk_leaves_grub_the_new_files(
    ext4_mount: tuple[Path, Path],
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image, mountpoint = ext4_mount
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=UUID=1 atoll=/atoll/deploy/default/deploy/abc.0 rw\n")
    monkeypatch.setattr(flush, "CMDLINE", cmdline)
    layout = images
    device = Device(mountpoint / "sysroot")
    device.install(ImageName.parse(f"oci:{layout}:1"), kargs=["root=UUID=1234"])
    boot = device.sysroot.boot
    install_grub_config(boot, GrubSettings(flush_after_write=True))
    grubenv = boot / "grub" / "grubenv"
    inode = grubenv.stat().st_ino
    device.stage(ImageName.parse(f"oci:{layout}:2"))
    device.finalize()
    cfg = (boot / "grub" / "grub.cfg").read_bytes()
    assert b" 2.0 (" in cfg.split(b"menuentry", 2)[1]
    assert read_grubenv(grubenv) == {"boot_counter": "3", "boot_success": "0"}
    assert grubenv.stat().st_ino == inode  # rewritten in place, as GRUB's save_env does
    # What a machine that powers off now without unmounting leaves to GRUB:
    assert unreplayed(image, "/sysroot/boot/grub/grub.cfg") == cfg
    assert unreplayed(image, "/sysroot/boot/grub/grubenv") == grubenv.read_bytes()
