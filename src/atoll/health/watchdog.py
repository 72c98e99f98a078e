"""The watchdog check: greenboot's ``02_watchdog.sh``, built in.

greenboot's script asks ``wdctl`` whether the current boot was started by a
hardware watchdog (the previous boot hung and the watchdog reset the machine).
If it was, and the newest deployment is less than
``GREENBOOT_WATCHDOG_GRACE_PERIOD`` hours old, the update is blamed and the boot
is red.

atoll runs the same rule as a required check of kind ``watchdog``, named
``watchdog``, before the scripts.  It does not look at the hardware itself: the
caller says what it knows in :class:`atoll.health.runner.BootInfo`
(``watchdog_reset``: None when the device has no watchdog or cannot tell;
``deployed_at``: when the deployment was made).  :func:`watchdog_reset_from_sysfs`
reads it on a machine booted for real; the directory device and container
boots have no watchdog of their own (a container would see the host's), so
there the check passes with "no watchdog" unless a caller says otherwise.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from atoll.health.checks import WATCHDOG_NAMES, CheckKind
from atoll.health.config import HealthConfig
from atoll.health.report import BUILTIN_PATH, CheckResult, CheckStatus

WATCHDOG_NAME = WATCHDOG_NAMES[0]


def check_watchdog(
    config: HealthConfig,
    *,
    watchdog_reset: bool | None,
    deployed_at: datetime.datetime | None,
    booted_at: datetime.datetime,
) -> CheckResult:
    """The result of the watchdog check for one boot."""

    def result(status: CheckStatus, output: str, exit_code: int | None = 0) -> CheckResult:
        problem = output if status is CheckStatus.DISABLED else None
        return CheckResult(
            WATCHDOG_NAME,
            CheckKind.WATCHDOG,
            BUILTIN_PATH,
            status,
            exit_code=exit_code if status in (CheckStatus.PASSED, CheckStatus.FAILED) else None,
            problem=problem,
            output=output,
        )

    if not config.watchdog_enabled:
        return result(CheckStatus.DISABLED, "GREENBOOT_WATCHDOG_CHECK_ENABLED is false")
    if config.disabled & set(WATCHDOG_NAMES):
        return result(CheckStatus.DISABLED, "disabled in greenboot.conf")
    if watchdog_reset is None:
        return result(CheckStatus.PASSED, "no hardware watchdog to ask: nothing to check")
    if not watchdog_reset:
        return result(CheckStatus.PASSED, "the previous boot did not end in a watchdog reset")
    if deployed_at is None:
        return result(
            CheckStatus.PASSED,
            "the previous boot ended in a watchdog reset, but when this deployment was made "
            "is not known: not blamed on it",
        )
    hours = (booted_at - deployed_at).total_seconds() / 3600
    grace = config.watchdog_grace_hours
    if hours < grace:
        return result(
            CheckStatus.FAILED,
            f"the previous boot ended in a watchdog reset {hours:.1f} h after this deployment "
            f"was made, within the grace period of {grace} h: blamed on the update",
            exit_code=1,
        )
    return result(
        CheckStatus.PASSED,
        f"the previous boot ended in a watchdog reset {hours:.1f} h after this deployment "
        f"was made, after the grace period of {grace} h: not blamed on it",
    )


def watchdog_reset_from_sysfs(sys: Path = Path("/sys")) -> bool | None:
    """Whether this boot was started by a hardware watchdog, as the kernel's
    watchdog drivers report it (``/sys/class/watchdog/*/bootstatus``, the flags
    ``wdctl`` shows); None when there is no watchdog that reports it.

    Like greenboot, any boot-status flag counts.  Inside a container this reads
    the host's watchdog: do not use it there."""
    base = sys / "class" / "watchdog"
    try:
        devices = sorted(base.iterdir())
    except OSError:
        return None
    seen = False
    for device in devices:
        try:
            status = int((device / "bootstatus").read_text().strip(), 0)
        except (OSError, ValueError):
            continue
        seen = True
        if status:
            return True
    return False if seen else None
