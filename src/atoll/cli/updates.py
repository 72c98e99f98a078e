"""``atoll updates status`` and ``atoll updates run``: automatic OS updates.

``--json`` output: ``status`` prints :func:`atoll.updates.status_document`,
``run`` prints :meth:`atoll.updates.UpdateRunResult.to_json` (both described
in docs/updates.md).

The running system's root (``--root``) is where ``/etc/atoll/updates.toml``, the
machine-id and inhibitor files are found: ``/`` on a real machine (the default
sysroot ``/sysroot``), and the sysroot's booted deployment for a directory
device.  A reboot is what ``atoll upgrade --apply`` does: ``systemctl reboot``
on a system booted from the sysroot, else the directory device's boot followed
by its health assessment.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.cli.host import guard_staging, running_inside
from atoll.cli.hostdevice import open_device
from atoll.errors import UsageError
from atoll.run import find_tool, run
from atoll.sysroot.lifecycle import Device
from atoll.updates import (
    SystemClock,
    describe,
    parse_duration,
    run_automatic_update,
    running_root,
    status_document,
)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    updates = commands.add_parser(
        "updates",
        help="automatic OS updates (/etc/atoll/updates.toml)",
        description="Automatic OS updates: what /etc/atoll/updates.toml asks for, "
        "when, and what the device did last.",
    )
    sub = updates.add_subparsers(dest="updates_command", metavar="COMMAND")
    sub.required = True

    status = sub.add_parser(
        "status",
        help="policy, windows, next opportunity, last check and inhibitors holding now",
    )
    _add_common(status)
    status.set_defaults(func=_status)

    run_cmd = sub.add_parser(
        "run",
        help="do what /etc/atoll/updates.toml says should happen now (the timer runs this)",
    )
    _add_common(run_cmd)
    add_registry_options(run_cmd)
    add_platform_options(run_cmd)
    run_cmd.add_argument(
        "--force",
        action="store_true",
        help="act now: ignore the windows, the random delay, the backoff after "
        "failures and the reboot inhibitors (the policy still decides what to do)",
    )
    run_cmd.add_argument(
        "--max-wait",
        metavar="DURATION",
        default="0",
        help="when the next opportunity is at most DURATION away (e.g. 90m), wait "
        "for it instead of returning (default 0: never wait)",
    )
    run_cmd.add_argument(
        "--allow-rolled-back",
        action="store_true",
        help="take the image even if this device rolled back from it before",
    )
    run_cmd.add_argument(
        "--allow-no-kernel",
        action="store_true",
        help="stage images without usr/lib/modules/*/vmlinuz (a container-boot device)",
    )
    run_cmd.set_defaults(func=_run)

    forget = sub.add_parser(
        "forget",
        help="let updates take an image this device rolled back from (see atoll updates status)",
    )
    add_global_options(forget)
    forget.add_argument("digest", metavar="DIGEST", help="its digest, or a unique prefix")
    forget.add_argument(
        "--sysroot",
        metavar="DIR",
        default="/sysroot",
        help="the device's sysroot (default /sysroot)",
    )
    forget.set_defaults(func=_forget)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_global_options(parser)
    parser.add_argument(
        "--sysroot",
        metavar="DIR",
        default="/sysroot",
        help="the device's sysroot (default /sysroot)",
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="the running system's root, with /etc/atoll/updates.toml (default: / for "
        "the sysroot /sysroot, else the sysroot's booted deployment)",
    )


def reboot_action(device: Device, out: Output) -> Callable[[], object]:
    """How to reboot, as ``atoll upgrade --apply`` does: systemd's reboot on a system
    booted from *device*, else the directory device's boot and health assessment."""
    if running_inside(device):

        def reboot() -> None:
            out.info("Rebooting into the new deployment")
            run([find_tool("systemctl", "systemd"), "reboot"], capture=False)

        return reboot

    def boot() -> None:
        from atoll.health.assess import assess_boot

        record = device.boot()
        outcome = assess_boot(device, inside=False).report.outcome.value
        out.info(f"Rebooted into {record.deployment[:12]} (entry {record.entry}): {outcome}")

    return boot


def _status(args: argparse.Namespace, out: Output) -> int:
    device = open_device(Path(args.sysroot))
    doc = status_document(device, running_root(device, args.root), SystemClock())
    out.result(doc, describe(doc))
    return 0


def _run(args: argparse.Namespace, out: Output) -> int:
    try:
        max_wait = parse_duration(args.max_wait)
    except ValueError as exc:
        raise UsageError(f"--max-wait: {exc}", hint="e.g. --max-wait 90m") from None
    device = open_device(Path(args.sysroot), system_context(args), progress=out.progress())
    device.kernel_optional = args.allow_no_kernel
    root = running_root(device, args.root)
    # What atoll upgrade checks before it stages, an automatic update checks too.
    guard_staging(device, root, follow_tag=True)
    result = run_automatic_update(
        device,
        root,
        SystemClock(),
        reboot=reboot_action(device, out),
        force=args.force,
        max_wait=max_wait,
        allow_rolled_back=args.allow_rolled_back,
    )
    out.result(result.to_json(), f"{result.outcome.value}: {result.message}")
    return 0


def _forget(args: argparse.Namespace, out: Output) -> int:
    from atoll.sysroot.rolledback import forget_rolled_back

    device = Device(Path(args.sysroot))
    with device.sysroot.lock():
        found = forget_rolled_back(device.sysroot, args.digest)
    out.result(
        {"forgotten": found.to_json()},
        f"Forgot {found.image_digest}: updates may take it again",
    )
    return 0
