"""Firmware for the container-boot device: boot, watch, boot again.

``run_boots`` plays the machine's firmware and bootloader around
:func:`atoll.device.nspawn.boot_container`: each round it lets the sysroot
choose an entry (counting the attempt, finalizing a staged deployment the last
shutdown left), boots that deployment with systemd as PID 1, and reads how the
boot ended.  A reboot the system asked for (the red path of a health check, an
applied update) or a boot that failed or hung leads to the next round, as a
power cycle would; a poweroff ends the run.

Inside, the deployment sees the sysroot at ``/sysroot`` (as on a real machine
after early boot) and the stateroot's ``/var`` at ``/var``.  The kernel command
line carries ``atoll=…`` naming the deployment and, for tests and the demo,
``atoll.poweroff=green`` asks the health check to power the machine off once a
boot is green (a real device keeps running).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.device.nspawn import ContainerBoot, DeviceBootOutcome, boot_container
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.state import BootRecord

#: Kernel argument asking the health check to power off after a green boot.
POWEROFF_ARG = "atoll.poweroff=green"


@dataclass(frozen=True)
class BootRound:
    number: int
    record: BootRecord
    boot: ContainerBoot

    def to_json(self) -> dict[str, Any]:
        return {
            "boot": self.number,
            **self.record.to_json(),
            "outcome": self.boot.outcome.value,
            "exitCode": self.boot.exit_code,
            "seconds": round(self.boot.duration, 2),
        }


@dataclass
class HarnessResult:
    rounds: list[BootRound] = field(default_factory=list)

    @property
    def last(self) -> BootRound | None:
        return self.rounds[-1] if self.rounds else None

    def to_json(self) -> dict[str, Any]:
        return {"boots": [r.to_json() for r in self.rounds]}


def machine_name(sysroot: Path) -> str:
    return "atoll-" + hashlib.sha256(str(sysroot.resolve()).encode()).hexdigest()[:12]


def run_boots(
    device: Device,
    *,
    max_boots: int = 10,
    timeout: float = 120.0,
    poweroff_when_green: bool = True,
    console_log: Path | None = None,
    on_round: Callable[[BootRound], None] | None = None,
) -> HarnessResult:
    sysroot = device.sysroot
    result = HarnessResult()
    for number in range(1, max_boots + 1):
        record = device.boot()
        root = sysroot.deploy_dir(record.stateroot) / record.deployment
        karg = f"atoll=/atoll/deploy/{record.stateroot}/deploy/{record.deployment}"
        cmdline = " ".join([karg, *([POWEROFF_ARG] if poweroff_when_green else [])])
        boot = boot_container(
            root,
            var=sysroot.var(record.stateroot),
            machine=machine_name(sysroot.root),
            timeout=timeout,
            binds=[(sysroot.root, "/sysroot")],
            kernel_cmdline=cmdline,
            console_log=console_log,
        )
        round_ = BootRound(number, record, boot)
        result.rounds.append(round_)
        if on_round is not None:
            on_round(round_)
        if boot.outcome is DeviceBootOutcome.POWEROFF:
            break
    return result
