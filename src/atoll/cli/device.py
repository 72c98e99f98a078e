"""``atoll device boot``: the container-boot device (systemd-nspawn, systemd as PID 1),
or a disk image in QEMU (``--disk``, UEFI or BIOS firmware)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options, duration
from atoll.cli.hostdevice import open_device
from atoll.device.harness import BootRound, run_boots
from atoll.device.machine import DiskRound, run_disk_boots
from atoll.device.nspawn import parse_network
from atoll.device.qemu import Firmware
from atoll.errors import InvalidInputError, UsageError
from atoll.sysroot.status import tries_left


def register(commands: argparse._SubParsersAction[Any]) -> None:
    device = commands.add_parser("device", help="run a sysroot as a device")
    sub = device.add_subparsers(dest="device_command", metavar="COMMAND")
    sub.required = True
    boot = sub.add_parser(
        "boot",
        help="boot the sysroot under systemd-nspawn (or a disk in QEMU) as firmware would, "
        "reboot after reboot",
        description="Choose a boot entry (counting attempts), boot its deployment with "
        "systemd as PID 1, and boot again when the system reboots or fails, until it "
        "powers off or --max-boots is reached. With --disk, start a disk image (atoll "
        "disk-image, install to-disk) in a QEMU virtual machine instead: its own "
        "bootloader chooses and counts, and its console goes to stderr (or --console-log).",
    )
    add_global_options(boot)
    boot.add_argument(
        "--sysroot",
        default="/sysroot",
        metavar="DIR",
        help="the device's sysroot (default /sysroot)",
    )
    boot.add_argument(
        "--disk",
        metavar="FILE",
        help="boot this disk image (raw or qcow2) in a QEMU virtual machine",
    )
    boot.add_argument(
        "--firmware",
        choices=[f.value for f in Firmware],
        help="with --disk: the machine's firmware, uefi (OVMF; the default) or bios (SeaBIOS)",
    )
    boot.add_argument(
        "--secure-boot",
        action="store_true",
        help="with --disk: UEFI firmware that enforces Secure Boot, Microsoft's keys enrolled",
    )
    boot.add_argument(
        "--max-boots", type=int, default=10, metavar="N", help="stop after N boots (default 10)"
    )
    boot.add_argument(
        "--timeout",
        type=duration,
        metavar="DURATION",
        help="a boot that takes longer is killed and counts as failed (default 120s; "
        "with --disk 300s)",
    )
    boot.add_argument(
        "--keep-running",
        action="store_true",
        help="do not power off after a green boot (stop it with Ctrl-C)",
    )
    boot.add_argument("--console-log", metavar="FILE", help="write the console output here")
    boot.add_argument(
        "--network",
        default="private",
        metavar="MODE",
        help="private (the default: loopback only), host (share the host's network, e.g. "
        "for updates from a registry on the host's loopback; with --disk, QEMU's user "
        "network, the host is 10.0.2.2), or a network namespace: a name from ip netns "
        "or a path (a LAN of the device's own)",
    )
    boot.add_argument(
        "--containers",
        action="store_true",
        help="the device runs containers itself (podman under its own systemd): every "
        "capability, the system calls crun needs, the unified cgroup hierarchy",
    )
    # The option's earlier spelling, kept for scripts that use it.
    boot.add_argument(
        "--host-network", action="store_const", const="host", dest="network", help=argparse.SUPPRESS
    )
    boot.set_defaults(func=_boot)


def _boot(args: argparse.Namespace, out: Output) -> int:
    if args.max_boots < 1:
        raise UsageError("--max-boots must be at least 1")
    if args.disk:
        return _boot_disk(args, out)
    if args.firmware or args.secure_boot:
        raise UsageError("--firmware and --secure-boot need --disk (a container has no firmware)")
    network = parse_network(args.network)

    def report(round_: BootRound) -> None:
        rec = round_.record
        counter = "" if rec.tries_left is None else f", {tries_left(rec.tries_left)}"
        fallback = ", fallback" if rec.fallback else ""
        if out.json:
            return  # the document at the end says it all
        # Each boot's line is the result, printed as it happens (on stdout, where
        # --json prints the whole document at the end).
        out.result(
            None,
            f"boot {round_.number}: {rec.deployment[:12]}{rec.deployment[64:]} "
            f"({rec.entry}{counter}{fallback}) -> {round_.boot.outcome.value} "
            f"in {round_.boot.duration:.1f} s",
        )

    result = run_boots(
        open_device(Path(args.sysroot)),
        max_boots=args.max_boots,
        timeout=120.0 if args.timeout is None else args.timeout,
        poweroff_when_green=not args.keep_running,
        console_log=Path(args.console_log) if args.console_log else None,
        on_round=report,
        network=network,
        containers=args.containers,
    )
    out.result(result.to_json(), None)
    return 0


def _boot_disk(args: argparse.Namespace, out: Output) -> int:
    if args.keep_running:
        raise UsageError("--keep-running is for a sysroot: a disk runs until it powers off")
    if args.secure_boot and args.firmware == Firmware.BIOS:
        raise UsageError("--secure-boot needs --firmware uefi")
    disk = Path(args.disk)
    if not disk.is_file():
        raise InvalidInputError(f"{disk}: no such disk image")

    def report(round_: DiskRound) -> None:
        out.info(
            f"boot {round_.number} ({round_.firmware}"
            f"{', Secure Boot' if round_.secure_boot else ''}, {round_.boot.accel}): "
            f"{round_.boot.outcome.value} in {round_.boot.duration:.1f} s"
        )

    console: Path | None = Path(args.console_log) if args.console_log else None
    if console is None and not out.quiet:
        console = Path("/dev/stderr")  # the user watches the machine start
    result = run_disk_boots(
        disk,
        firmware=Firmware(args.firmware or Firmware.UEFI),
        max_boots=args.max_boots,
        timeout=300.0 if args.timeout is None else args.timeout,
        console_log=console,
        network=args.network == "host",
        secure_boot=args.secure_boot,
        on_round=report,
    )
    out.result(result.to_json(), None)
    return 0
