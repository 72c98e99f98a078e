"""The QEMU harness: its command line, how it reads a boot's end, and that a hung
machine is stopped with its whole process group."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from atoll.device.nspawn import DeviceBootOutcome
from atoll.device.qemu import (
    Accel,
    DirectKernel,
    Firmware,
    _Console,
    boot_vm,
    copy_efi_vars,
    group_alive,
    kvm_works,
    outcome_of_console,
    ovmf_file,
    qemu_command,
)
from atoll.errors import FirmwareError, InvalidInputError, VMError
from helpers.cli import run_atoll
from helpers.parts import missing, require_tool


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
    # An installer's target disk: attached writable.
    writable, _ = qemu_command(disk, extra_disks=[qcow2], accel=Accel.TCG, extra_writable=True)
    assert f"file={qcow2},format=qcow2,if=virtio,cache=unsafe" in writable
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


def test_the_console_types_the_answer_to_each_prompt() -> None:
    """Each time a prompt shows (also when it comes in two reads), its answer is
    typed once, in order; the console is copied to the log as it came."""
    out_read, out_write = os.pipe()
    key_read, key_write = os.pipe()
    sink = io.BytesIO()
    prompts = [(b"Press any key to continue...", b"\r"), (b"login:", b"root\n")]
    with os.fdopen(out_read, "rb", buffering=0) as stream:
        console = _Console(stream, sink, prompts, key_write)
        os.close(key_write)  # the console types on its own copy
        for chunk in (b"error: bad shim signature.\r\nPress any key", b" to continue...",
                      b"Press any key to continue...\r\nlogin: ", b"no prompt\r\n"):  # fmt: skip
            os.write(out_write, chunk)
            time.sleep(0.05)  # separate reads
        os.close(out_write)
        console.close()
    with os.fdopen(key_read, "rb") as typed:
        assert typed.read() == b"\r\rroot\n"  # the console's copy is closed at its end
    assert sink.getvalue() == (
        b"error: bad shim signature.\nPress any key to continue...Press any key to continue..."
        b"\nlogin: no prompt\n"
    )


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


def test_uefi_needs_a_variable_store(disk: Path, tmp_path: Path) -> None:
    require_ovmf()
    with pytest.raises(FirmwareError, match="no UEFI variable store"):
        qemu_command(disk, firmware=Firmware.UEFI)
    efi_vars = copy_efi_vars(tmp_path / "vars.fd")
    argv, _ = qemu_command(disk, accel=Accel.TCG, firmware=Firmware.UEFI, efi_vars=efi_vars)
    flash = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive" and "pflash" in argv[i + 1]]
    assert flash == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_file('OVMF_CODE_4M.fd')}",
        f"if=pflash,format=raw,unit=1,file={efi_vars}",
    ]
    assert efi_vars.read_bytes() == ovmf_file("OVMF_VARS_4M.fd").read_bytes()
    with pytest.raises(FirmwareError, match=r"OVMF_VARS_4M\.fd: no such file") as raised:
        ovmf_file("OVMF_VARS_4M.fd", tmp_path)
    assert raised.value.hint == "install it with: apt-get install ovmf"


def require_ovmf() -> None:
    try:
        ovmf_file("OVMF_CODE_4M.fd")
    except FirmwareError:
        missing("UEFI firmware for QEMU is not installed (apt-get install ovmf)")


@pytest.mark.vm
@pytest.mark.parametrize(
    ("firmware", "seconds", "boots"),
    [("uefi", 20, 1), ("bios", 4, 2)],
    ids=["uefi", "bios"],
)
def test_device_boot_starts_a_disk_with_its_firmware(
    disk: Path, tmp_path: Path, firmware: str, seconds: int, boots: int
) -> None:
    """A disk with nothing to boot: the firmware starts (OVMF's boot manager
    says so on the console), finds nothing, and the boot runs out of time; each
    boot is a new start of the machine.  OVMF under emulation needs the longer time."""
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    require_ovmf()
    console = tmp_path / "console.log"
    proc = run_atoll(
        "device", "boot", "--disk", str(disk), "--firmware", firmware,
        "--timeout", f"{seconds}s", "--max-boots", str(boots),
        "--console-log", str(console), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["disk"] == str(disk)
    assert [(b["boot"], b["firmware"], b["outcome"]) for b in doc["boots"]] == [
        (n, firmware, "timeout") for n in range(1, boots + 1)
    ]
    said = console.read_text(errors="replace")
    if firmware == "uefi":
        assert said.count("BdsDxe: ") >= boots
    else:  # SeaBIOS writes nothing on the serial port when there is nothing to boot
        assert "BdsDxe" not in said


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--firmware", "uefi"], 2, "--firmware and --secure-boot need --disk"),
        (["--disk", "DISK", "--keep-running"], 2, "--keep-running is for a sysroot"),
        (["--disk", "missing.raw"], 4, "missing.raw: no such disk image"),
    ],
)
def test_device_boot_refuses_bad_options(
    disk: Path, args: list[str], code: int, message: str
) -> None:
    proc = run_atoll("device", "boot", *[str(disk) if a == "DISK" else a for a in args])
    assert proc.returncode == code and message in proc.stderr
