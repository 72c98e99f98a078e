"""A disk as a machine: ``atoll device boot --disk``, power cycle after power cycle.

``run_disk_boots`` starts the disk in QEMU (:func:`atoll.device.qemu.boot_vm`)
with UEFI firmware or a BIOS, and starts it again each time the machine
reboots, fails or hangs, until it powers off or the boots run out.  Unlike the
container-boot device (:mod:`atoll.device.harness`), nothing here chooses an
entry or counts a try: the disk's own bootloader does, from its ``grubenv``,
as on real hardware.  The machine keeps one UEFI variable store for the whole
run (a copy of the firmware's template, removed at the end), as a real one
keeps its NVRAM across reboots.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.device.nspawn import DeviceBootOutcome
from atoll.device.qemu import Firmware, VMBoot, boot_vm, fresh_efi_vars


@dataclass(frozen=True)
class DiskRound:
    number: int
    firmware: Firmware
    boot: VMBoot
    secure_boot: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "boot": self.number,
            "firmware": self.firmware.value,
            "secureBoot": self.secure_boot,
            "accel": self.boot.accel.value,
            "outcome": self.boot.outcome.value,
            "exitCode": self.boot.exit_code,
            "seconds": round(self.boot.duration, 2),
        }


@dataclass
class DiskRun:
    disk: Path
    rounds: list[DiskRound] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"disk": str(self.disk), "boots": [r.to_json() for r in self.rounds]}


def run_disk_boots(
    disk: Path,
    *,
    firmware: Firmware = Firmware.UEFI,
    max_boots: int = 10,
    timeout: float = 300.0,
    console_log: Path | None = None,
    network: bool = False,
    memory_mib: int = 1024,
    secure_boot: bool = False,
    on_round: Callable[[DiskRound], None] | None = None,
) -> DiskRun:
    """Boot *disk* until it powers off (or *max_boots* boots, each at most
    *timeout* seconds); a reboot, a failure or a hang is followed by a new start."""
    run = DiskRun(disk)
    with tempfile.TemporaryDirectory(prefix="atoll-machine-") as scratch:
        efi_vars = None
        if firmware is Firmware.UEFI:
            efi_vars = fresh_efi_vars(Path(scratch), secure_boot=secure_boot)
        for number in range(1, max_boots + 1):
            boot = boot_vm(
                disk,
                timeout=timeout,
                memory_mib=memory_mib,
                network=network,
                console_log=console_log,
                firmware=firmware,
                efi_vars=efi_vars,
                secure_boot=secure_boot,
            )
            round_ = DiskRound(number, firmware, boot, secure_boot)
            run.rounds.append(round_)
            if on_round is not None:
                on_round(round_)
            if boot.outcome is DeviceBootOutcome.POWEROFF:
                break
            if boot.outcome is DeviceBootOutcome.FAILED and boot.exit_code != 0:
                break  # QEMU itself stopped: starting it again changes nothing
    return run
