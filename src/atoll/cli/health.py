"""``atoll health``: run the greenboot-compatible health checks now, and show
what the last run found (docs/health.md)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options
from atoll.errors import HealthCheckFailedError
from atoll.health import (
    BootInfo,
    CheckResult,
    CheckStatus,
    HealthReport,
    load_config,
    read_history,
    read_last_report,
    read_rollbacks,
    record_report,
    run_boot_checks,
    watchdog_reset_from_sysfs,
)
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.origin import Deployment
from atoll.sysroot.state import SysrootState

DEFAULT_SYSROOT = "/sysroot"
_OUTPUT_LINES = 10


def register(commands: argparse._SubParsersAction[Any]) -> None:
    health = commands.add_parser(
        "health",
        help="greenboot-compatible health checks: run them, show the last outcome",
        description="greenboot-compatible health checks: run them, show the last outcome",
    )
    add_global_options(health)
    sub = health.add_subparsers(dest="health_command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the health checks now and record the outcome",
        description="Run the required and wanted checks, then green.d or red.d; record the "
        "report in the sysroot. Exits 0 when green, 46 when red.",
    )
    add_global_options(run)
    run.add_argument(
        "--sysroot",
        metavar="DIR",
        help="check the booted deployment of this sysroot, in a chroot, and record there "
        f"(default {DEFAULT_SYSROOT}); with --root: only where to record",
    )
    run.add_argument(
        "--root",
        metavar="DIR",
        help="check the system in DIR instead ('/': this booted system, no chroot); "
        "recorded in --sysroot, else in DIR/sysroot if that is a sysroot",
    )
    run.set_defaults(func=_run)

    status = sub.add_parser(
        "status",
        help="show the last outcome, the checks, attempts left and automatic rollbacks",
    )
    add_global_options(status)
    status.add_argument(
        "--sysroot",
        metavar="DIR",
        default=DEFAULT_SYSROOT,
        help=f"the device's sysroot (default {DEFAULT_SYSROOT})",
    )
    status.set_defaults(func=_status)

    boot = sub.add_parser(
        "boot",
        help="assess this boot (what atoll-healthcheck.service runs in a booted system)",
        description="Settle a bootloader fallback (make the rollback permanent and record "
        "why), run the checks in this system, record the outcome, and mark the boot good "
        "when green. Exits 46 when red: the unit then reboots.",
    )
    add_global_options(boot)
    boot.add_argument(
        "--sysroot",
        metavar="DIR",
        default=DEFAULT_SYSROOT,
        help=f"the device's sysroot (default {DEFAULT_SYSROOT})",
    )
    boot.set_defaults(func=_boot)


def _boot(args: argparse.Namespace, out: Output) -> int:
    from atoll.cli.hostdevice import open_device
    from atoll.health.assess import assess_boot
    from atoll.run import run as run_command

    assessment = assess_boot(open_device(Path(args.sysroot)), inside=True)
    if assessment.rollback is not None:
        out.info(
            f"rolled back from {_short(assessment.rollback.from_deployment)} "
            f"after {assessment.rollback.attempts_used} attempts"
        )
    out.result(assessment.to_json(), _describe_run(assessment.report))
    if assessment.report.reason is not None:
        raise HealthCheckFailedError(
            f"the boot is red: {assessment.report.reason.summary()}",
            hint="red.d has run; the system reboots and the bootloader counts the attempt",
        )
    if _poweroff_when_green():
        # The container-boot harness and the demo ask for this; a device keeps running.
        run_command(["systemctl", "poweroff", "--no-block"], check=False)
    return 0


def _poweroff_when_green() -> bool:
    """``atoll.poweroff=green`` on PID 1's command line (a container's "kernel"
    command line) or on the kernel's."""
    for source in (Path("/proc/1/cmdline"), Path("/proc/cmdline")):
        try:
            words = source.read_bytes().replace(b"\0", b" ").decode().split()
        except OSError:
            continue
        if "atoll.poweroff=green" in words:
            return True
    return False


# --- atoll health run ----------------------------------------------------------------


def _run(args: argparse.Namespace, out: Output) -> int:
    binds: list[tuple[str, Path]] = []
    record_to: Path | None
    if args.root is None:
        sysroot = Path(args.sysroot or DEFAULT_SYSROOT)
        record_to = sysroot
        state = SysrootState.load(Sysroot(sysroot))
        deployment = state.current
        root = state.path(deployment)
        chroot = True
        var = state.sysroot.var(deployment.stateroot)
        if (root / "var").is_dir() and var.is_dir():
            binds.append(("/var", var))
        info = _boot_info(state, deployment)
        out.info(f"Checking {deployment.stateroot}/{deployment.short} in {root}")
    else:
        root = Path(args.root)
        chroot = root.resolve() != Path("/")
        record_to = _record_dir(root, args.sysroot)
        found = SysrootState.load(Sysroot(record_to)) if record_to is not None else None
        booted = found.booted if found is not None else None
        if found is not None and booted is not None:
            info = _boot_info(found, booted)
        else:
            info = BootInfo(boot_id=_kernel_boot_id())
        if not chroot and not _in_container():
            info = replace(info, watchdog_reset=watchdog_reset_from_sysfs())
    config, warnings = load_config(root)
    report = run_boot_checks(
        root,
        chroot=chroot,
        config=config,
        boot_info=info,
        binds=binds,
        config_warnings=warnings,
    )
    recorded = record_report(record_to, report) if record_to is not None else None
    for warning in report.warnings:
        out.info(f"warning: {warning}")
    text = _describe_run(report)
    if recorded is not None:
        text += f"\nRecorded in {recorded}"
    else:
        text += "\nNot recorded: no sysroot (see --sysroot)"
    out.result(report.to_json(), text)
    if report.reason is not None:
        raise HealthCheckFailedError(
            f"the boot is red: {report.reason.summary()}",
            hint="the red.d scripts have run; see atoll health status",
        )
    return 0


def _record_dir(root: Path, sysroot: str | None) -> Path | None:
    if sysroot is not None:
        return Path(sysroot)
    candidate = root / DEFAULT_SYSROOT.lstrip("/")
    return candidate if Sysroot(candidate).exists() else None


def _boot_info(state: SysrootState, deployment: Deployment) -> BootInfo:
    """The sysroot's view of this boot; the kernel's boot id when the sysroot
    recorded none (a check run by hand)."""
    from atoll.health.assess import boot_info

    info = boot_info(state, deployment)
    return info if info.boot_id else replace(info, boot_id=_kernel_boot_id())


def _kernel_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return ""


def _in_container() -> bool:
    """A container sees the host's watchdog, which says nothing about its own boots."""
    # systemd's convention: a container's PID 1 gets $container and writes the file.
    in_env = bool(os.environ.get("container"))  # noqa: SIM112
    return in_env or Path("/run/systemd/container").exists()


# --- atoll health status -------------------------------------------------------------


def _status(args: argparse.Namespace, out: Output) -> int:
    sysroot = Path(args.sysroot)
    state = SysrootState.load(Sysroot(sysroot))
    last = read_last_report(sysroot)
    history = read_history(sysroot)
    rollbacks = read_rollbacks(sysroot)
    boot = _boot_state(state)
    doc = {
        "last": last.to_json() if last else None,
        "boot": boot,
        "history": [h.to_json() for h in history],
        "rollbacks": [r.to_json() for r in rollbacks],
    }
    lines = []
    if last is None:
        lines.append("No health checks have run yet")
    else:
        lines.append(_describe_run(last))
    if boot is not None:
        lines.append(_describe_boot(boot))
    if history:
        recent = " ".join(h.outcome.value for h in history[-10:])
        lines.append(f"Last {min(len(history), 10)} of {len(history)} recorded runs: {recent}")
    lines.append("Automatic rollbacks:" if rollbacks else "Automatic rollbacks: none")
    for rollback in rollbacks:
        why = (
            rollback.reason.summary() if rollback.reason else "the boots did not get to the checks"
        )
        lines.append(
            f"  {rollback.time}  {_short(rollback.from_deployment)} -> "
            f"{_short(rollback.to_deployment)} after {rollback.attempts_used} attempts: {why}"
        )
    out.result(doc, "\n".join(lines))
    return 0


def _boot_state(state: SysrootState) -> dict[str, Any] | None:
    """The boot counter of the booted deployment's entry (else the default's)."""
    deployment = state.booted or state.default
    if deployment is None:
        return None
    entry = state.entry_for(deployment)
    return {
        "deployment": deployment.id,
        "booted": deployment == state.booted,
        "entry": entry.id if entry else None,
        "assessing": entry is not None and entry.tries_left is not None,
        "triesLeft": entry.tries_left if entry else None,
        "triesDone": entry.tries_done if entry else 0,
        "rollbackQueued": state.rollback_queued,
    }


# --- human output --------------------------------------------------------------------


def _short(deployment: str) -> str:
    commit, _, serial = deployment.partition(".")
    return f"{commit[:12]}.{serial}" if serial else deployment[:12] or "-"


def _describe_run(report: HealthReport) -> str:
    attempt = (
        f", boot attempt {report.attempt} of {report.max_attempts}"
        if report.attempt is not None
        else ""
    )
    lines = [
        f"Boot is {report.outcome.value.upper()}: deployment {_short(report.deployment)}"
        f"{attempt}, checked {report.finished}"
    ]
    if report.reason is not None:
        lines.append(f"  reason: {report.reason.summary()}")
    for check in report.checks:
        lines.append(_describe_check(check))
        if check.status is CheckStatus.FAILED:
            lines += check_output_lines(check.output, "      ")
    return "\n".join(lines)


def check_output_lines(output: str, indent: str) -> list[str]:
    """A failed check's own words, its first lines (where a script says why it
    fails; its last lines are in the record), for the human output of
    ``health`` and ``boot``."""
    lines = output.splitlines()
    shown = [f"{indent}| {line}" for line in lines[:_OUTPUT_LINES]]
    if len(lines) > _OUTPUT_LINES:
        shown.append(
            f"{indent}| … {len(lines) - _OUTPUT_LINES} more lines in atoll health status --json"
        )
    return shown


def _describe_check(check: CheckResult) -> str:
    status = check.status.value.upper() if check.status is CheckStatus.FAILED else check.status
    duration = f"{check.duration:7.3f} s" if check.status in _RAN else " " * 9
    detail = check.problem
    if detail is None and check.status is CheckStatus.FAILED:
        detail = f"exit code {check.exit_code}"
    if detail is None and check.kind == "watchdog":
        detail = check.output
    return f"  {check.kind.value:8} {status:8} {duration}  {check.name}" + (
        f": {detail}" if detail else ""
    )


_RAN = (CheckStatus.PASSED, CheckStatus.FAILED)


def _describe_boot(boot: dict[str, Any]) -> str:
    which = "booted" if boot["booted"] else "default"
    head = f"Boot entry of the {which} deployment {_short(boot['deployment'])}"
    if boot["entry"] is None:
        return f"{head}: none"
    if not boot["assessing"]:
        text = f"{head} ({boot['entry']}): known good, not counted"
    else:
        left, done = boot["triesLeft"], boot["triesDone"]
        text = (
            f"{head} ({boot['entry']}): being assessed, {left} attempt"
            f"{'' if left == 1 else 's'} left ({done} used)"
        )
    if boot["rollbackQueued"]:
        text += "; the next boot goes to another deployment"
    return text
