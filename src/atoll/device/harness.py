"""Firmware for the container-boot device: boot, watch, boot again.

``run_boots`` plays the machine's firmware and bootloader around
:func:`atoll.device.nspawn.boot_container`: each round it lets the sysroot
choose an entry (counting the attempt, finalizing a staged deployment the last
shutdown left), boots that deployment with systemd as PID 1, and reads how the
boot ended.  A reboot the system asked for (the red path of a health check, an
applied update) or a boot that failed or hung leads to the next round, as a
power cycle would; a poweroff ends the run.

Each round checks, before anything is written, that the deployment that boots
next can boot as a container (systemd in it, a /var to bind, systemd-nspawn
and the options): a tree that cannot boot leaves the staged deployment staged
and spends no boot attempt.  If the harness still fails to start the container
after the entry was chosen, the attempt is given back and the boot record
restored: a failure of the harness is not a failed boot of the device.

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

from atoll.device.nspawn import ContainerBoot, DeviceBootOutcome, boot_container, prepare_boot
from atoll.errors import AtollError
from atoll.fsutil import write_atomic
from atoll.sysroot.bootloader.entries import set_counter
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.origin import Deployment
from atoll.sysroot.state import BootRecord, SysrootState

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
    network: str = "private",
    containers: bool = False,
) -> HarnessResult:
    sysroot = device.sysroot
    result = HarnessResult()
    extra = [POWEROFF_ARG] if poweroff_when_green else []

    def options(stateroot: str, deployment: str) -> dict[str, Any]:
        karg = f"atoll=/atoll/deploy/{stateroot}/deploy/{deployment}"
        return {
            "var": sysroot.var(stateroot),
            "machine": machine_name(sysroot.root),
            "timeout": timeout,
            "binds": [(sysroot.root, "/sysroot")],
            "kernel_cmdline": " ".join([karg, *extra]),
            "network": network,
            "containers": containers,
        }

    for number in range(1, max_boots + 1):
        upcoming = next_to_boot(device.state())
        if upcoming is not None:
            # Nothing is written yet: a tree that cannot boot changes nothing.
            root = sysroot.deploy_dir(upcoming.stateroot) / upcoming.id
            prepare_boot(root, **options(upcoming.stateroot, upcoming.id))
        before = _read_booted(device)
        record = device.boot()
        root = sysroot.deploy_dir(record.stateroot) / record.deployment
        try:
            boot = boot_container(
                root, console_log=console_log, **options(record.stateroot, record.deployment)
            )
        except (AtollError, OSError):
            _give_back(device, record, before)
            raise
        round_ = BootRound(number, record, boot)
        result.rounds.append(round_)
        if on_round is not None:
            on_round(round_)
        if boot.outcome is DeviceBootOutcome.POWEROFF:
            break
    return result


def next_to_boot(state: SysrootState) -> Deployment | None:
    """The deployment the next :meth:`Device.boot` chooses, as far as it can be
    known without writing: the staged one (its finalize comes first), else the
    first entry in bootloader order with tries left."""
    staged = state.staged
    if staged is not None and not staged.origin.download_only:
        return staged
    entries = state.entries
    chosen = next((e for e in entries if e.tries_left != 0), entries[0] if entries else None)
    return state.deployment_of(chosen) if chosen is not None else None


def _read_booted(device: Device) -> bytes | None:
    try:
        return device.sysroot.booted_file.read_bytes()
    except FileNotFoundError:
        return None


def _give_back(device: Device, record: BootRecord, before: bytes | None) -> None:
    """The container never started: undo the counting of this boot attempt and
    the record of what booted (the finalize stays: shutdown would have done it)."""
    with device.sysroot.lock():
        if record.tries_left is not None:
            entry = next((e for e in device.state().entries if e.id == record.entry), None)
            if entry is not None and entry.tries_left is not None and entry.tries_done > 0:
                set_counter(
                    device.sysroot.boot, entry.id, entry.tries_left + 1, entry.tries_done - 1
                )
        if before is None:
            device.sysroot.booted_file.unlink(missing_ok=True)
        else:
            write_atomic(device.sysroot.booted_file, before)
