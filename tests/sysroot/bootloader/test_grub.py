"""grub.cfg and grubenv kept in step with the boot entries by the device's lifecycle.

GRUB itself runs in tests/device/test_vm.py; here its side is played by setting
grubenv as its grub.cfg would, and grub-script-check (GRUB's own parser) checks
the generated configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from atoll.errors import BootloaderError
from atoll.oci.transports import ImageName
from atoll.sysroot.bootloader.bls import BootEntry
from atoll.sysroot.bootloader.grub import GrubSettings, grub_config, install_grub_config, sync_grub
from atoll.sysroot.bootloader.grubenv import read_grubenv, update_grubenv
from atoll.sysroot.lifecycle import Device
from helpers.parts import require_tool


@pytest.fixture
def device(tmp_path: Path, images: Path) -> Device:
    layout = images
    device = Device(tmp_path / "sysroot")
    device.install(
        ImageName.parse(f"oci:{layout}:1"), kargs=["root=UUID=1234", "console=ttyS0,115200"]
    )
    return device


def env(device: Device) -> dict[str, str]:
    return read_grubenv(device.sysroot.boot / "grub" / "grubenv")


def menu(device: Device) -> list[str]:
    text = (device.sysroot.boot / "grub" / "grub.cfg").read_text()
    return [line for line in text.splitlines() if line.startswith("menuentry")]


def test_nothing_is_written_where_atoll_does_not_manage_grub(device: Device) -> None:
    assert sync_grub(device.sysroot.boot) is False
    assert not (device.sysroot.boot / "grub").exists()


def test_config_follows_the_entries_and_passes_grubs_own_parser(
    device: Device, tmp_path: Path
) -> None:
    check = require_tool("grub-script-check", "grub-common")
    install_grub_config(device.sysroot.boot, GrubSettings())
    cfg = device.sysroot.boot / "grub" / "grub.cfg"
    subprocess.run([check, str(cfg)], check=True)
    text = cfg.read_text()
    assert "serial --unit=0 --speed=115200" in text  # console=ttyS0 in the entry
    assert "  linux /boot/atoll/" in text and "root=UUID=1234" in text
    assert "  initrd /boot/atoll/" in text
    assert len(menu(device)) == 1 and env(device) == {}

    device.stage(ImageName.parse(f"oci:{tmp_path}/images:2"))
    device.finalize()
    subprocess.run([check, str(cfg)], check=True)
    first, second = menu(device)
    assert " 2.0 (" in first and " 1.0 (" in second
    assert env(device) == {"boot_counter": "3", "boot_success": "0"}


def test_titles_and_arguments_are_quoted() -> None:
    entry = BootEntry(
        id="x",
        linux="/k/vmlinuz",
        title="it's v1; $(reboot)",
        options='rw atoll=/atoll/deploy/a/deploy/b.0 quoted="a b"',
    )
    text = grub_config([entry], GrubSettings(boot_prefix="", timeout=5))
    assert "menuentry 'it'\\''s v1; $(reboot)' --id 'x' {" in text
    assert "linux /k/vmlinuz rw atoll=/atoll/deploy/a/deploy/b.0 'quoted=a b'" in text
    assert "set timeout=5" in text and "serial" not in text


def test_an_empty_set_of_entries_is_refused() -> None:
    with pytest.raises(BootloaderError):
        grub_config([], GrubSettings())


def test_a_newer_settings_file_is_refused(device: Device) -> None:
    install_grub_config(device.sysroot.boot, GrubSettings())
    (device.sysroot.boot / "grub" / "atoll.json").write_text('{"version": 2, "bootPrefix": ""}')
    with pytest.raises(BootloaderError, match="newer"):
        sync_grub(device.sysroot.boot)


def test_green_boot_and_rollback_update_grubenv(device: Device, tmp_path: Path) -> None:
    boot = device.sysroot.boot
    install_grub_config(boot, GrubSettings())
    device.stage(ImageName.parse(f"oci:{tmp_path}/images:2"))
    device.finalize()
    update_grubenv(boot / "grub" / "grubenv", {"boot_counter": "2"})  # GRUB counted one
    device.boot()  # the directory device plays the bootloader and records the boot
    device.mark_boot_good()
    assert env(device) == {"boot_success": "1"}  # greenboot: success, counter unset
    device.rollback()
    assert " 1.0 (" in menu(device)[0]
    assert "boot_counter" not in env(device)


def test_a_finalized_deployment_keeps_the_kernel_arguments(device: Device, tmp_path: Path) -> None:
    """The new entry starts from the arguments of the deployment it was staged on:
    without them the new kernel would boot with no root= and no serial console."""
    boot = device.sysroot.boot
    install_grub_config(boot, GrubSettings())
    device.stage(ImageName.parse(f"oci:{tmp_path}/images:2"))
    device.finalize()
    text = (boot / "grub" / "grub.cfg").read_text()
    assert "serial --unit=0 --speed=115200" in text
    linux = [line.split()[2:] for line in text.splitlines() if line.startswith("  linux ")]
    assert len(linux) == 2
    for args in linux:
        assert args[:3] == ["rw", "root=UUID=1234", "console=ttyS0,115200"]
    assert linux[0][3] != linux[1][3] and all(a[3].startswith("atoll=") for a in linux)
