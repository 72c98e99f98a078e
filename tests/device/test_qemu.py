"""The QEMU harness: its command line, how it reads a boot's end, and that a hung
machine is stopped with its whole process group."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from atoll.device.nspawn import DeviceBootOutcome
from atoll.device.qemu import (
    Accel,
    DirectKernel,
    boot_vm,
    group_alive,
    kvm_works,
    outcome_of_console,
    qemu_command,
)
from atoll.errors import InvalidInputError, VMError
from helpers.parts import require_tool


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with path.open("wb") as fh:
        fh.truncate(1024 * 1024)  # no boot code: the firmware finds nothing to boot
    return path


def test_command_line(disk: Path, tmp_path: Path) -> None:
    qcow2 = tmp_path / "data.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + bytes(100))
    argv, accel = qemu_command(disk, extra_disks=[qcow2], accel=Accel.TCG, memory_mib=512)
    assert accel is Accel.TCG
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    assert "-no-reboot" in argv and argv[argv.index("-serial") :][:2] == ["-serial", "stdio"]
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives == [
        f"file={disk},format=raw,if=virtio,cache=unsafe",
        f"file={qcow2},format=qcow2,if=virtio,readonly=on",
    ]
    assert "-nic" not in argv
    assert "-nic" in qemu_command(disk, accel=Accel.TCG, network=True)[0]
    kvm, _ = qemu_command(disk, accel=Accel.KVM)
    assert kvm[1:5] == ["-accel", "kvm", "-cpu", "host"]
    assert "-kernel" not in argv


def test_direct_kernel_command_line(disk: Path, tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    direct = DirectKernel(kernel, initrd, "root=/dev/vda1 rw atoll=/x")
    with pytest.raises(VMError, match="vmlinuz: no such file"):
        qemu_command(disk, direct=direct)
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    argv, _ = qemu_command(disk, accel=Accel.TCG, direct=direct)
    assert argv[-6:] == [
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", "root=/dev/vda1 rw atoll=/x",
    ]  # fmt: skip


def test_bad_options_are_refused(disk: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        qemu_command(disk, memory_mib=16)
    odd = tmp_path / "a,b.raw"
    odd.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="','"):
        qemu_command(odd)
    with pytest.raises(VMError, match="no such disk image"):
        qemu_command(tmp_path / "missing.raw")


@pytest.mark.parametrize(
    ("code", "console", "outcome"),
    [
        (0, "[ 50.1] reboot: Power down\n", DeviceBootOutcome.POWEROFF),
        (0, "[ 40.0] reboot: Restarting system\n", DeviceBootOutcome.REBOOT),
        (
            0,
            "Kernel panic - not syncing: VFS\nRebooting in 1 seconds..\n",
            DeviceBootOutcome.REBOOT,
        ),
        (0, "reboot: Restarting system\n...\nreboot: Power down\n", DeviceBootOutcome.POWEROFF),
        (0, "SeaBIOS\nNo bootable device.\n", DeviceBootOutcome.FAILED),
        (1, "reboot: Power down\n", DeviceBootOutcome.FAILED),
    ],
)
def test_outcome_from_the_console(code: int, console: str, outcome: DeviceBootOutcome) -> None:
    assert outcome_of_console(code, console) is outcome


def test_kvm_needs_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n")
    assert not kvm_works(Path("/dev/kvm"), cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu vmx sse2\n")
    assert not kvm_works(tmp_path / "no-kvm", cpuinfo)


@pytest.mark.vm
def test_a_hung_machine_is_stopped_with_its_process_group(disk: Path, tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    require_tool("setpriv", "util-linux")
    console = tmp_path / "console.log"
    started = time.monotonic()
    boot = boot_vm(disk, timeout=3, accel=Accel.TCG, memory_mib=256, console_log=console)
    assert boot.outcome is DeviceBootOutcome.TIMEOUT
    assert 3 <= boot.duration < 15 and time.monotonic() - started < 20
    assert not group_alive(boot.pid)
    assert console.exists()


@pytest.mark.vm
def test_qemu_refusing_to_start_is_a_failed_boot(disk: Path) -> None:
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    boot = boot_vm(disk, timeout=30, accel=Accel.TCG, memory_mib=64 * 1024 * 1024)
    assert boot.outcome is DeviceBootOutcome.FAILED and boot.exit_code != 0
    assert "qemu-system-x86_64" in boot.console_tail
