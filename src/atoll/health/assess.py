"""Boot assessment: what happens after the bootloader has chosen a deployment.

1. **Fallback.**  If the bootloader skipped the default entry (its attempts are
   used up), the rollback is made permanent: the booted deployment becomes the
   default and the failed one stays behind it as the (bad) rollback; the
   rollback is recorded with the reason of the failed deployment's last red
   boot (check, exit code, output tail) and how many attempts it used, and
   its image's digest is kept so that updates do not stage it again
   (:mod:`atoll.sysroot.rolledback`; a green boot of it forgets it).
2. **Checks.**  The required and wanted checks of the booted deployment run
   (the old deployment is checked too after a fallback), green.d or red.d after.
3. **Outcome.**  Green: the entry's boot counter is removed (the boot is good).
   Red: the counter stays; the caller reboots, and the bootloader counts the next
   attempt, falling back once none are left.

The same code runs on the directory device (checks in a chroot of the
deployment) and inside a booted system (``atoll health boot``; checks in ``/``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.health.config import load_config
from atoll.health.records import (
    RollbackRecord,
    read_last_report,
    record_report,
    record_rollback,
)
from atoll.health.report import HealthReport
from atoll.health.runner import BootInfo, check_chroot_allowed, run_boot_checks
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.origin import Deployment
from atoll.sysroot.rolledback import forget_if_rolled_back, record_rolled_back
from atoll.sysroot.state import SysrootState
from atoll.timeutil import utc_timestamp


@dataclass(frozen=True)
class Assessment:
    report: HealthReport
    rollback: RollbackRecord | None

    @property
    def green(self) -> bool:
        return self.report.green

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.report.outcome.value,
            "report": self.report.to_json(),
            "rollback": self.rollback.to_json() if self.rollback else None,
        }


def boot_info(state: SysrootState, deployment: Deployment) -> BootInfo:
    """The boot of *deployment* as the sysroot saw it: counter, when it was made,
    which boot this is."""
    entry = state.entry_for(deployment)
    attempt = max_attempts = None
    if entry is not None and entry.tries_left is not None:
        attempt = entry.tries_done
        max_attempts = entry.tries_left + entry.tries_done
    record = state.booted_record
    here = record is not None and record.deployment == deployment.id
    return BootInfo(
        deployment=deployment.id,
        boot_id=record.boot_id if record is not None and here else "",
        attempt=attempt,
        max_attempts=max_attempts,
        deployed_at=_parse_time(deployment.origin.deployed_at),
        booted_at=_parse_time(record.time) if record is not None and here else None,
    )


def check_assessable(device: Device) -> None:
    """Before a directory device boots (and counts the attempt): raise unless its
    checks can run here; a harness that cannot run them is no failed boot."""
    check_chroot_allowed(device.sysroot.root)


def assess_boot(device: Device, *, inside: bool) -> Assessment:
    """Assess the boot ``run/booted.json`` names.  *inside*: this process runs in
    that booted system (checks in ``/``); else the checks run in a chroot of the
    deployment with the stateroot's /var bound."""
    sysroot = device.sysroot.root
    if inside:
        from atoll.boot.record import record_kernel_boot

        # A machine booted by GRUB and a kernel: record which entry booted and
        # copy GRUB's count into the entries (nothing happens in a container).
        record_kernel_boot(device)
    settled = device.settle_fallback()
    rollback = None
    if settled is not None:
        failed, attempts = settled
        state = device.state()
        last = read_last_report(sysroot)
        reason = last.reason if last is not None and last.deployment == failed.id else None
        booted = state.current
        rollback = RollbackRecord(
            time=utc_timestamp(),
            from_deployment=failed.id,
            to_deployment=booted.id,
            reason=reason,
            attempts_used=attempts,
        )
        record_rollback(sysroot, rollback)
        # Updates must not stage this image again by themselves (no boot loop).
        summary = reason.summary() if reason is not None else None
        record_rolled_back(device.sysroot, failed, rollback.time, attempts, summary)
    state = device.state()
    deployment = state.current
    if inside:
        root, chroot, binds = Path("/"), False, []
    else:
        root = state.path(deployment)
        chroot = True
        var = device.sysroot.var(deployment.stateroot)
        binds = [("/var", var)] if (root / "var").is_dir() and var.is_dir() else []
    config, warnings = load_config(root)
    report = run_boot_checks(
        root,
        chroot=chroot,
        config=config,
        boot_info=boot_info(state, deployment),
        binds=binds,
        config_warnings=warnings,
    )
    record_report(sysroot, report)
    if report.green:
        device.mark_boot_good()
        forget_if_rolled_back(device.sysroot, deployment.origin.manifest_digest)
    return Assessment(report, rollback)


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
