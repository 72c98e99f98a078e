"""Health checks after every boot, in greenboot's layout, so greenboot's check
scripts run unchanged; the boot's outcome; the records of outcomes and rollbacks.

This package imports only the standard library and atoll's ``errors``,
``fsutil`` and ``run``: it also runs inside booted images that have python3 and
nothing else.  A test holds it to that.

User documentation: docs/health.md.
"""

from atoll.fsutil import resolve_in_root
from atoll.health.checks import (
    SEARCH_DIRS,
    WATCHDOG_NAMES,
    Check,
    CheckKind,
    CheckPlan,
    discover,
)
from atoll.health.config import CONFIG_PATH, SETTINGS, HealthConfig, Setting, load_config
from atoll.health.records import (
    HISTORY_LIMIT,
    RECORDS_VERSION,
    ROLLBACK_LIMIT,
    BootOutcome,
    RollbackRecord,
    health_dir,
    read_history,
    read_last_report,
    read_rollbacks,
    record_report,
    record_rollback,
)
from atoll.health.report import (
    REPORT_VERSION,
    CheckResult,
    CheckStatus,
    FailureReason,
    HealthReport,
    Outcome,
)
from atoll.health.runner import BootInfo, run_boot_checks
from atoll.health.watchdog import check_watchdog, watchdog_reset_from_sysfs

__all__ = [
    "CONFIG_PATH",
    "HISTORY_LIMIT",
    "RECORDS_VERSION",
    "REPORT_VERSION",
    "ROLLBACK_LIMIT",
    "SEARCH_DIRS",
    "SETTINGS",
    "WATCHDOG_NAMES",
    "BootInfo",
    "BootOutcome",
    "Check",
    "CheckKind",
    "CheckPlan",
    "CheckResult",
    "CheckStatus",
    "FailureReason",
    "HealthConfig",
    "HealthReport",
    "Outcome",
    "RollbackRecord",
    "Setting",
    "check_watchdog",
    "discover",
    "health_dir",
    "load_config",
    "read_history",
    "read_last_report",
    "read_rollbacks",
    "record_report",
    "record_rollback",
    "resolve_in_root",
    "run_boot_checks",
    "watchdog_reset_from_sysfs",
]
