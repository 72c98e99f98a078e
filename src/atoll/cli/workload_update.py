"""``atoll workload auto-update``: update workloads whose image moved; roll back the unhealthy."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    duration,
    system_context,
)
from atoll.cli.workload import add_manager_options, manager_for, unit_roots
from atoll.errors import UsageError, WorkloadUpdateFailedError

if TYPE_CHECKING:
    from atoll.workloads.autoupdate.updater import AutoUpdateResult

#: Where auto-update keeps its state unless --update-state-dir says
#: ($ATOLL_WORKLOAD_STATE_DIR is the supervisor's, as for every workload command).
STATE_DIR_ENV = "ATOLL_WORKLOAD_UPDATE_STATE_DIR"
COLUMNS = ("UNIT", "CONTAINER", "IMAGE", "POLICY", "UPDATED")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "auto-update",
        help="update workloads whose image moved; roll back those that turn unhealthy",
    )
    add_global_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="check only: report what would be updated"
    )
    parser.add_argument(
        "--rollback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="roll a unit back to its previous image when it fails the watch (default: yes)",
    )
    parser.add_argument(
        "--watch",
        type=duration,
        default=None,
        metavar="DURATION",
        help="how long a restarted unit must stay healthy (default 60s)",
    )
    parser.add_argument(
        "--format",
        choices=["table", "json"],
        default=None,
        help="output format (json is the same as --json)",
    )
    add_manager_options(parser)
    parser.add_argument(
        "--unit",
        action="append",
        metavar="NAME",
        help="only this unit (NAME.container; repeatable)",
    )
    parser.add_argument(
        "--update-state-dir",
        metavar="DIR",
        help=f"where auto-update remembers digests and rollbacks (default ${STATE_DIR_ENV} "
        "or /var/lib/atoll/workloads)",
    )
    parser.add_argument(
        "--parallel",
        dest="restart_parallel",
        type=int,
        default=4,
        metavar="N",
        help="units restarted at once when they do not depend on each other (default 4)",
    )
    parser.add_argument(
        "--ignore-windows",
        action="store_true",
        help="update now even outside the units' io.atoll.autoupdate.window",
    )
    add_registry_options(parser)
    add_platform_options(parser)
    parser.set_defaults(func=_auto_update)


def _auto_update(args: argparse.Namespace, out: Output) -> int:
    from atoll.workloads.autoupdate.state import DEFAULT_STATE_DIR
    from atoll.workloads.autoupdate.units import workloads_from
    from atoll.workloads.autoupdate.updater import AutoUpdateOptions, AutoUpdater
    from atoll.workloads.unitfiles.quadlet import load_units

    if args.format == "json":
        out.json = True
    if args.restart_parallel < 1:
        raise UsageError("--parallel must be at least 1")
    options = AutoUpdateOptions(
        dry_run=args.dry_run,
        rollback=args.rollback,
        watch=60.0 if args.watch is None else args.watch,
        parallel=args.restart_parallel,
        ignore_windows=args.ignore_windows,
        only=tuple(_unit_name(u) for u in args.unit or ()),
    )
    state_dir = Path(args.update_state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
    loaded = load_units(unit_roots(args), user=args.user)
    updater = AutoUpdater(
        manager_for(args), ctx=system_context(args), state_dir=state_dir, options=options
    )
    result = updater.run(workloads_from(loaded))
    out.result(result.to_json(), render_table(result))
    if not result.ok:
        names = ", ".join(f"{r.unit} ({r.updated}: {r.reason})" for r in result.failed)
        raise WorkloadUpdateFailedError(
            f"{len(result.failed)} workload update(s) did not succeed: {names}",
            hint="the JSON output (--format json) gives each unit's digests and reason",
        )
    return 0


def _unit_name(name: str) -> str:
    return name if "." in name else f"{name}.container"


def render_table(result: AutoUpdateResult) -> str:
    rows = [COLUMNS] + [
        (r.unit, r.container or "-", r.image, r.policy, str(r.updated)) for r in result.reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    notes = [
        f"{r.unit}: {r.reason}" for r in result.reports if r.reason and r.reason != "up to date"
    ]
    notes += [
        f"{r.unit}: newer versions available, not taken: {', '.join(r.newer)}"
        for r in result.reports
        if r.newer
    ]
    return "\n".join(lines + (["", *notes] if notes else []))
