"""Recording a boot GRUB made: GRUB's count copied into the entries, a fallback
recognised, nothing done twice or inside a container.

GRUB's side is played by setting grubenv as its grub.cfg does at each boot; the
kernel's side by a command line and a boot id in files (the real ones are read
in tests/device/test_vm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.boot.record import KernelBoot, record_kernel_boot
from atoll.errors import DeploymentError
from atoll.oci.transports import ImageName
from atoll.sysroot.bootloader.grub import GrubSettings, install_grub_config
from atoll.sysroot.bootloader.grubenv import read_grubenv, update_grubenv
from atoll.sysroot.lifecycle import Device


@pytest.fixture
def device(tmp_path: Path, images: Path) -> Device:
    """v1 installed and good, v2 finalized and about to be tried, GRUB managed."""
    layout = images
    device = Device(tmp_path / "sysroot")
    device.install(ImageName.parse(f"oci:{layout}:1"))
    install_grub_config(device.sysroot.boot, GrubSettings())
    device.stage(ImageName.parse(f"oci:{layout}:2"))
    device.finalize()
    return device


def paths(device: Device) -> tuple[str, str]:
    """The atoll= of v2 (first) and v1."""
    new, old = device.state().intended_entries()
    assert new.deployment_path and old.deployment_path
    return new.deployment_path, old.deployment_path


def grub_boots(device: Device) -> None:
    """What grub.cfg does to grubenv before it starts a kernel."""
    path = device.sysroot.boot / "grub" / "grubenv"
    env = read_grubenv(path)
    counter = env.get("boot_counter")
    if counter is not None and env.get("boot_success") == "0":
        counter = "-1" if counter in ("0", "-1") else str(int(counter) - 1)
        update_grubenv(path, {"boot_counter": counter})
    update_grubenv(path, {"boot_success": "0"})


def test_grubs_count_is_copied_into_the_entry(device: Device) -> None:
    new, _ = paths(device)
    grub_boots(device)
    record = record_kernel_boot(device, KernelBoot(new, "boot1"))
    assert record is not None
    assert record.tries_left == 2 and not record.fallback
    first = device.state().intended_entries()[0]
    assert (first.tries_left, first.tries_done) == (2, 1)
    booted = json.loads(device.sysroot.booted_file.read_text())
    assert booted["bootId"] == "boot1" and booted["entry"] == first.id
    # The same boot again (atoll health boot run twice): nothing changes.
    assert record_kernel_boot(device, KernelBoot(new, "boot1")) is None
    assert device.state().intended_entries()[0].tries_left == 2


def test_three_red_boots_then_the_fallback_is_recorded_and_settled(device: Device) -> None:
    new, old = paths(device)
    for number in (1, 2, 3):
        grub_boots(device)
        record = record_kernel_boot(device, KernelBoot(new, f"boot{number}"))
        assert record is not None and record.tries_left == 3 - number
    grub_boots(device)  # counter 0: GRUB takes entry 1 and sets -1
    assert read_grubenv(device.sysroot.boot / "grub" / "grubenv")["boot_counter"] == "-1"
    record = record_kernel_boot(device, KernelBoot(old, "boot4"))
    assert record is not None and record.fallback
    entries = {e.deployment_path: e for e in device.state().entries}
    assert (entries[new].tries_left, entries[new].tries_done) == (0, 3)  # bad
    # Until the rollback is made permanent, GRUB keeps falling back on its own.
    assert read_grubenv(device.sysroot.boot / "grub" / "grubenv")["boot_counter"] == "0"
    settled = device.settle_fallback()
    assert settled is not None and settled[1] == 3
    menu = (device.sysroot.boot / "grub" / "grub.cfg").read_text()
    assert menu.index(old) < menu.index(new)  # v1 is GRUB's default again
    assert "boot_counter" not in read_grubenv(device.sysroot.boot / "grub" / "grubenv")
    device.mark_boot_good()
    assert read_grubenv(device.sysroot.boot / "grub" / "grubenv") == {"boot_success": "1"}


def test_another_entry_without_grubs_fallback_is_no_verdict(device: Device) -> None:
    new, old = paths(device)
    grub_boots(device)  # counter 2, but someone picked v1 in the menu
    record = record_kernel_boot(device, KernelBoot(old, "boot1"))
    assert record is not None and not record.fallback
    first = device.state().intended_entries()[0]
    assert first.deployment_path == new and first.tries_left == 3  # untouched


def test_nothing_happens_without_atoll_on_the_command_line(device: Device, tmp_path: Path) -> None:
    cmdline, boot_id = tmp_path / "cmdline", tmp_path / "boot_id"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n")
    boot_id.write_text("3c1c4bd8-7b8e-4a63-9a4f-0e8f3c1b2a55\n")
    assert KernelBoot.read(cmdline, boot_id) is None
    if "atoll=" not in Path("/proc/cmdline").read_text():  # this machine, or a container
        assert record_kernel_boot(device) is None
    new, _ = paths(device)
    cmdline.write_text(f"root=UUID=x rw atoll={new} quiet -- atoll=/ignored\n")
    kernel = KernelBoot.read(cmdline, boot_id)
    assert kernel == KernelBoot(new, "3c1c4bd87b8e4a639a4f0e8f3c1b2a55")


def test_a_deployment_no_entry_names_is_an_error(device: Device) -> None:
    with pytest.raises(DeploymentError, match="no boot entry"):
        record_kernel_boot(device, KernelBoot("/atoll/deploy/default/deploy/abc.0", "b"))
    with pytest.raises(DeploymentError, match="does not name a deployment"):
        record_kernel_boot(device, KernelBoot("/somewhere/else", "b"))
