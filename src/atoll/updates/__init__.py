"""Automatic OS updates: rpm-ostreed's AutomaticUpdatePolicy and more.

``/etc/atoll/updates.toml`` says what a device does on its own (check, stage,
or apply and reboot), in which windows, spread by a per-device random delay,
at what download rate, and what may hold a reboot off.  :func:`decide` is the
pure decision; :func:`run_automatic_update` carries it out on a device; the
timer in ``units/`` runs it hourly.  See docs/updates.md.

Every name is imported on first use: the decision and the run bring the
device's whole lifecycle with them, and the configuration brings TOML and time
zones, none of which ``atoll workload auto-update`` (it needs only the update
windows, :mod:`atoll.updates.window`) should pay for at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atoll.lazy import lazy_exports

if TYPE_CHECKING:
    from atoll.updates.clock import Clock, FakeClock, SystemClock
    from atoll.updates.config import (
        ApplySettings,
        DownloadSettings,
        InhibitorSettings,
        TrustSettings,
        UpdatePolicy,
        UpdatesConfig,
        load_config,
        parse_config,
        parse_duration,
        parse_rate,
    )
    from atoll.updates.cron import CronExpression
    from atoll.updates.inhibitors import (
        Inhibitor,
        InhibitorKind,
        check_inhibitors,
        ensure_reboot_allowed,
        wait_for_inhibitors,
    )
    from atoll.updates.policy import (
        Action,
        DeviceFacts,
        StagedUpdate,
        UpdateDecision,
        decide,
        device_delay,
    )
    from atoll.updates.runner import (
        Outcome,
        UpdatableDevice,
        UpdateRunResult,
        run_automatic_update,
        running_root,
    )
    from atoll.updates.state import UpdateState, state_path
    from atoll.updates.status import describe, status_document
    from atoll.updates.window import Window

#: The names imported on first use, by the module that defines them.
_LAZY = {
    "clock": ("Clock", "FakeClock", "SystemClock"),
    "config": (
        "ApplySettings",
        "DownloadSettings",
        "InhibitorSettings",
        "UpdatePolicy",
        "TrustSettings",
        "UpdatesConfig",
        "load_config",
        "parse_config",
        "parse_duration",
        "parse_rate",
    ),
    "cron": ("CronExpression",),
    "inhibitors": (
        "Inhibitor",
        "InhibitorKind",
        "check_inhibitors",
        "ensure_reboot_allowed",
        "wait_for_inhibitors",
    ),
    "policy": (
        "Action",
        "DeviceFacts",
        "StagedUpdate",
        "UpdateDecision",
        "decide",
        "device_delay",
    ),
    "runner": (
        "Outcome",
        "UpdatableDevice",
        "UpdateRunResult",
        "run_automatic_update",
        "running_root",
    ),
    "state": (
        "UpdateState",
        "state_path",
    ),
    "status": (
        "describe",
        "status_document",
    ),
    "window": ("Window",),
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Action",
    "ApplySettings",
    "Clock",
    "CronExpression",
    "DeviceFacts",
    "DownloadSettings",
    "FakeClock",
    "Inhibitor",
    "InhibitorKind",
    "InhibitorSettings",
    "Outcome",
    "StagedUpdate",
    "SystemClock",
    "TrustSettings",
    "UpdatableDevice",
    "UpdateDecision",
    "UpdatePolicy",
    "UpdateRunResult",
    "UpdateState",
    "UpdatesConfig",
    "Window",
    "check_inhibitors",
    "decide",
    "describe",
    "device_delay",
    "ensure_reboot_allowed",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "run_automatic_update",
    "running_root",
    "state_path",
    "status_document",
    "wait_for_inhibitors",
]
