"""The device in its third setting: a disk image booted in a QEMU virtual machine.

The machine: a PC with UEFI firmware (OVMF, the disk's ESP boots as on any
UEFI machine) or SeaBIOS (``--firmware bios``), virtio disks, a virtio random
number generator, the first serial port as the console, no network unless
asked for, no display::

    qemu-system-x86_64 -accel kvm|tcg -m MEM -smp CPUS -nodefaults -display none
        -no-reboot -serial stdio -monitor none
        [-drive if=pflash,format=raw,unit=0,readonly=on,file=OVMF_CODE_4M.fd
         -drive if=pflash,format=raw,unit=1,file=VARS]               (uefi)
        [-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on
         OVMF_CODE_4M.secboot.fd, VARS from OVMF_VARS_4M.ms.fd]     (Secure Boot)

With Secure Boot the firmware is the build that enforces it, behind SMM (so the
guest cannot write the variables around it), and the variable store starts
with Microsoft's keys enrolled and Secure Boot on: what a PC is sold with.
        -drive file=DISK,format=FMT,if=virtio,cache=unsafe
        [-drive file=EXTRA,format=raw,if=virtio,readonly=on ...]
        -device virtio-rng-pci [-nic user,model=virtio-net-pci,restrict=on]
        [-kernel VMLINUZ -initrd INITRAMFS -append CMDLINE]

The last line starts a kernel directly instead of the disk's bootloader (a
:class:`DirectKernel`): for trying an initramfs or kernel arguments without
writing them to the disk.

KVM is used when ``/dev/kvm`` answers its API version and the CPU flags show
hardware virtualization; otherwise TCG (software emulation, about ten times
slower).

**Each reboot is a fresh start.**  With ``-no-reboot`` QEMU exits when the
guest reboots instead of resetting it: a reboot under emulation is slower than
a new process, and the caller (the test, the firmware role) decides whether to
start the machine again.  QEMU exits with status 0 both on a poweroff and on a
reboot; the kernel's last words on the console tell them apart:

    =============================  ==========  ====================================
    ``reboot: Power down``         poweroff    the system powered off
    ``reboot: Restarting system``  reboot      the system (or a panic with panic=N)
                                               asked for a reboot
    ``Kernel panic``               reboot      a panic: the next start is a new try
    anything else, or status != 0  failed      QEMU refused or crashed (see the log)
    the deadline passed            timeout     QEMU and its process group were killed
    =============================  ==========  ====================================

**Answers on the console.**  A boot may be given prompts to answer
(``answers``: pairs of the text the console shows and what to type then, on
the serial port, which is QEMU's standard input).  GRUB, for one, shows
``Press any key to continue...`` after an entry failed to boot and waits ten
seconds before it boots the fallback entry: a machine with no one at its
console can be given a key to go on at once.

QEMU runs in a process group of its own; a timeout (or an interrupted caller)
sends SIGTERM to the group, then SIGKILL after a grace period, and
``setpriv --pdeathsig`` takes it down if the caller dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from atoll.device.console import run_with_console
from atoll.device.nspawn import DeviceBootOutcome
from atoll.errors import FirmwareError, InvalidInputError, VMError, from_oserror
from atoll.run import Process, TimeoutExpired, dies_with_caller, find_tool

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12
_STOP_GRACE = 5.0
_READER_GRACE = 5.0
_TAIL_LINES = 40
#: How much of one boot's console is kept in memory to read the outcome from.
_KEEP_BYTES = 4 << 20
_POWEROFF = re.compile(r"reboot: Power down|System halted")
_REBOOT = re.compile(r"reboot: Restarting system|Kernel panic")


class Firmware(StrEnum):
    UEFI = "uefi"
    BIOS = "bios"


#: Debian's ovmf: the firmware's code (read-only) and the template of its
#: variable store, which each machine gets a writable copy of.
OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = "OVMF_CODE_4M.fd"
OVMF_VARS = "OVMF_VARS_4M.fd"
OVMF_CODE_SECURE = "OVMF_CODE_4M.secboot.fd"
OVMF_VARS_MS = "OVMF_VARS_4M.ms.fd"


def ovmf_file(name: str, directory: Path = OVMF_DIR) -> Path:
    path = directory / name
    if not path.is_file():
        raise FirmwareError(
            f"{path}: no such file (UEFI firmware for the VM)",
            hint="install it with: apt-get install ovmf",
        )
    return path


def fresh_efi_vars(directory: Path, *, secure_boot: bool = False) -> Path:
    """A new variable store in *directory*: OVMF's empty one, or for Secure Boot
    the one with Microsoft's keys enrolled and Secure Boot on."""
    template = OVMF_VARS_MS if secure_boot else OVMF_VARS
    return copy_efi_vars(directory / template, template)


def copy_efi_vars(dest: Path, template: str = OVMF_VARS) -> Path:
    """A machine's own UEFI variable store, copied from the firmware's template."""
    source = ovmf_file(template)
    try:
        shutil.copyfile(source, dest)
    except OSError as exc:
        raise FirmwareError(f"{dest}: cannot copy {source} ({exc.strerror})") from None
    return dest


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class VMBoot:
    outcome: DeviceBootOutcome
    #: QEMU's exit status (negative: killed by that signal).
    exit_code: int
    #: Seconds from starting QEMU until it exited.
    duration: float
    #: The last lines of the serial console, carriage returns removed.
    console_tail: str
    accel: Accel
    #: QEMU's process id, which is also its process group's id.
    pid: int


@dataclass(frozen=True)
class DirectKernel:
    """A kernel QEMU starts itself (``-kernel``/``-initrd``/``-append``), the
    disk's bootloader skipped."""

    kernel: Path
    initrd: Path
    cmdline: str


def kvm_works(device: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when *device* answers KVM's API version and the CPU says it has
    hardware virtualization (``vmx`` or ``svm``).  Hosts that pass ``/dev/kvm``
    through without the CPU flags start a VM whose kernel then hangs."""
    try:
        flags = {
            word
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
            for word in line.split(":", 1)[1].split()
        }
    except OSError:
        return False
    if not flags & {"vmx", "svm"}:
        return False
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == _KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def _image_format(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise VMError(f"{path}: no such disk image") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    return "qcow2" if magic == b"QFI\xfb" else "raw"


def qemu_command(
    disk: Path,
    *,
    extra_disks: Sequence[Path] = (),
    memory_mib: int = 1024,
    cpus: int = 2,
    accel: Accel = Accel.AUTO,
    network: bool = False,
    direct: DirectKernel | None = None,
    firmware: Firmware = Firmware.BIOS,
    efi_vars: Path | None = None,
    secure_boot: bool = False,
    qemu: str = QEMU,
    extra_writable: bool = False,
) -> tuple[list[str], Accel]:
    """The QEMU command line that boots *disk* (checked, not run) and the
    accelerator it uses.  UEFI needs *efi_vars*, the machine's variable store
    (:func:`copy_efi_vars`).  *extra_disks* are read-only unless
    *extra_writable* (the disks an installer writes)."""
    if memory_mib < 256 or cpus < 1:
        raise InvalidInputError(f"a VM needs 256 MiB or more and a CPU (got {memory_mib}, {cpus})")
    if accel is Accel.AUTO:
        accel = Accel.KVM if kvm_works() else Accel.TCG
    for path in (disk, *extra_disks):
        if "," in str(path):
            raise InvalidInputError(f"{path}: QEMU cannot name a path with ','")
    argv = [
        qemu,
        "-accel",
        accel.value,
        *(["-cpu", "host"] if accel is Accel.KVM else []),
        "-m",
        str(memory_mib),
        "-smp",
        str(cpus),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-drive",
        f"file={disk.absolute()},format={_image_format(disk)},if=virtio,cache=unsafe",
    ]
    if secure_boot and firmware is not Firmware.UEFI:
        raise InvalidInputError("Secure Boot needs UEFI firmware")
    if secure_boot:
        argv[1:1] = ["-machine", "q35,smm=on"]
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if firmware is Firmware.UEFI:
        code = OVMF_CODE_SECURE if secure_boot else OVMF_CODE
        if efi_vars is None or not efi_vars.is_file():
            raise FirmwareError(f"{efi_vars}: no UEFI variable store for the machine")
        if "," in str(efi_vars):
            raise InvalidInputError(f"{efi_vars}: QEMU cannot name a path with ','")
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_file(code)}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={efi_vars.absolute()}",
        ]
    for extra in extra_disks:
        fmt = _image_format(extra)
        mode = "cache=unsafe" if extra_writable else "readonly=on"
        argv += ["-drive", f"file={extra.absolute()},format={fmt},if=virtio,{mode}"]
    argv += ["-device", "virtio-rng-pci"]
    if network:
        # User networking: the guest reaches the host's loopback as 10.0.2.2.
        argv += ["-nic", "user,model=virtio-net-pci"]
    if direct is not None:
        for path in (direct.kernel, direct.initrd):
            if not path.is_file():
                raise VMError(f"{path}: no such file (a kernel and an initramfs to start)")
        argv += ["-kernel", str(direct.kernel.absolute()), "-initrd", str(direct.initrd.absolute())]
        argv += ["-append", direct.cmdline]
    return argv, accel


def outcome_of_console(exit_code: int, console: str) -> DeviceBootOutcome:
    if exit_code != 0:
        return DeviceBootOutcome.FAILED
    last_poweroff = max((m.end() for m in _POWEROFF.finditer(console)), default=-1)
    last_reboot = max((m.end() for m in _REBOOT.finditer(console)), default=-1)
    if last_poweroff < 0 and last_reboot < 0:
        return DeviceBootOutcome.FAILED
    return DeviceBootOutcome.POWEROFF if last_poweroff > last_reboot else DeviceBootOutcome.REBOOT


def boot_vm(
    disk: Path,
    *,
    timeout: float,
    extra_disks: Sequence[Path] = (),
    memory_mib: int = 1024,
    cpus: int = 2,
    accel: Accel = Accel.AUTO,
    network: bool = False,
    direct: DirectKernel | None = None,
    console_log: Path | None = None,
    firmware: Firmware = Firmware.BIOS,
    efi_vars: Path | None = None,
    secure_boot: bool = False,
    extra_writable: bool = False,
    answers: Sequence[tuple[str, str]] = (),
) -> VMBoot:
    """Start a machine from *disk* and wait until it powers off, reboots, fails or
    *timeout* seconds pass.  The serial console is appended to *console_log*.
    UEFI without *efi_vars*: a fresh variable store for this boot alone.
    *answers*: (PROMPT, TEXT) pairs: each time the console shows PROMPT, TEXT
    is typed on it."""
    if timeout <= 0:
        raise InvalidInputError(f"boot timeout must be positive, not {timeout}")
    with contextlib.ExitStack() as scratch:
        if firmware is Firmware.UEFI and efi_vars is None:
            directory = scratch.enter_context(tempfile.TemporaryDirectory(prefix="atoll-efi-"))
            efi_vars = fresh_efi_vars(Path(directory), secure_boot=secure_boot)
        return _boot(
            disk, timeout, extra_disks, memory_mib, cpus, accel, network, direct,
            console_log, firmware, efi_vars, secure_boot, extra_writable, answers,
        )  # fmt: skip


def _boot(
    disk: Path,
    timeout: float,
    extra_disks: Sequence[Path],
    memory_mib: int,
    cpus: int,
    accel: Accel,
    network: bool,
    direct: DirectKernel | None,
    console_log: Path | None,
    firmware: Firmware,
    efi_vars: Path | None,
    secure_boot: bool,
    extra_writable: bool,
    answers: Sequence[tuple[str, str]],
) -> VMBoot:
    qemu = find_tool(QEMU, "qemu-system-x86")
    argv, used = qemu_command(
        disk,
        extra_disks=extra_disks,
        memory_mib=memory_mib,
        cpus=cpus,
        accel=accel,
        network=network,
        direct=direct,
        firmware=firmware,
        efi_vars=efi_vars,
        secure_boot=secure_boot,
        qemu=qemu,
        extra_writable=extra_writable,
    )
    argv = dies_with_caller(argv)
    log.debug("vm: %s", shlex.join(argv))
    replies = [(prompt.encode(), text.encode()) for prompt, text in answers if prompt]
    with contextlib.ExitStack() as pipes:
        keyboard: int | None = None
        typing: int | None = None
        if replies:
            keyboard, typing = os.pipe()
            for fd in (keyboard, typing):
                pipes.callback(os.close, fd)

        def console(stream: IO[bytes], sink: IO[bytes] | None) -> _Console:
            return _Console(stream, sink, replies, typing)

        code, timed_out, duration, reader, pid = run_with_console(
            argv,
            timeout=timeout,
            console_log=console_log,
            console=console,
            stop=_stop,
            label=f"vm: {disk}",
            stdin=keyboard,
        )
    text = reader.text()
    outcome = DeviceBootOutcome.TIMEOUT if timed_out else outcome_of_console(code, text)
    log.debug("vm: %s ended: %s (exit %d) after %.1f s", disk, outcome, code, duration)
    return VMBoot(outcome, code, duration, reader.tail(), used, pid)


def _stop(proc: Process) -> int:
    """SIGTERM to QEMU's process group, SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=_STOP_GRACE)
        except TimeoutExpired:
            log.warning("QEMU (pid %d) ignored %s", proc.pid, sig.name)
    raise VMError(f"QEMU (pid {proc.pid}) survived SIGKILL")


def group_alive(pgid: int) -> bool:
    """True while any process of the group *pgid* exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class _Console:
    """Copies the serial console to the log as it comes (CR LF becomes LF) and
    keeps the last few MiB for the outcome and the tail; types the answer to
    each prompt of *replies* on *keyboard* (a pipe to QEMU's standard input)."""

    def __init__(
        self,
        stream: IO[bytes],
        sink: IO[bytes] | None,
        replies: Sequence[tuple[bytes, bytes]] = (),
        keyboard: int | None = None,
    ) -> None:
        self._stream = stream
        self._sink = sink
        self._kept = bytearray()
        self._cr = False
        self._replies = list(replies) if keyboard is not None else []
        # Its own copy, closed by the reader when the console ends: the caller's
        # may be closed (and its number reused) while this thread still runs.
        self._keyboard = os.dup(keyboard) if self._replies and keyboard is not None else -1
        self._unanswered = bytearray()
        self._thread = threading.Thread(target=self._pump, name="qemu-console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            self._copy()
        finally:
            if self._keyboard >= 0:
                os.close(self._keyboard)

    def _copy(self) -> None:
        fd = self._stream.fileno()
        while chunk := os.read(fd, 65536):
            if self._cr:
                chunk = b"\r" + chunk
            self._cr = chunk.endswith(b"\r")
            if self._cr:
                chunk = chunk[:-1]
            text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if self._sink is not None:
                self._sink.write(text)
                self._sink.flush()
            self._kept += text
            if len(self._kept) > _KEEP_BYTES:
                del self._kept[: len(self._kept) - _KEEP_BYTES]
            if self._replies:
                self._answer(text)

    def _answer(self, text: bytes) -> None:
        """Type the reply to each prompt the console showed (a prompt may come
        in two reads: the end of what was read is kept for the next)."""
        self._unanswered += text
        while True:
            found = [
                (at, prompt, reply)
                for prompt, reply in self._replies
                if (at := self._unanswered.find(prompt)) >= 0
            ]
            if not found:
                break
            at, prompt, reply = min(found)
            del self._unanswered[: at + len(prompt)]
            try:
                os.write(self._keyboard, reply)
            except OSError as exc:  # QEMU is gone: its end of the pipe is closed
                log.debug("vm: cannot type %r: %s", reply, exc)
        longest = max(len(prompt) for prompt, _ in self._replies)
        del self._unanswered[: max(0, len(self._unanswered) - longest + 1)]

    def close(self) -> None:
        self._thread.join(_READER_GRACE)
        if not self._thread.is_alive():
            self._stream.close()

    def text(self) -> str:
        return self._kept.decode(errors="replace")

    def tail(self) -> str:
        return "\n".join(self.text().rstrip("\n").split("\n")[-_TAIL_LINES:])
