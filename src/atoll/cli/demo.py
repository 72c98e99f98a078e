"""``atoll demo``: the edge story on this machine (see atoll.demo and docs/demo.md)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from atoll.cli.common import Output, add_global_options
from atoll.errors import UsageError


def register(commands: argparse._SubParsersAction[Any]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the demonstration: registry, signed OS images, two devices, failover, rollback",
        description="Tell the edge story on this machine with real parts (needs root, "
        "docker-registry, podman, systemd-nspawn, debootstrap; see docs/demo.md).",
    )
    add_global_options(demo)
    demo.add_argument(
        "--fast", action="store_true", help="shorter timers (for CI): keepalived's adverts 0.3 s"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the registry and devices running; stop them with --stop",
    )
    demo.add_argument(
        "--workdir", metavar="DIR", help="where the demo keeps its files (default: a temp dir)"
    )
    demo.add_argument(
        "--stop",
        metavar="WORKDIR",
        help="stop what an earlier 'atoll demo --keep' left running in WORKDIR",
    )
    demo.add_argument(
        "--base-tree",
        metavar="DIR",
        help="a prepared Debian tree with systemd, python3, podman and keepalived to use "
        "instead of debootstrap",
    )
    demo.add_argument(
        "--cache",
        metavar="DIR",
        help="where the debootstrapped tree and base layer are kept "
        "(default $ATOLL_DEMO_CACHE or /var/cache/atoll/demo)",
    )
    demo.add_argument(
        "--apt-source",
        metavar="LINE",
        help="the sources.list line the OS image builds install packages from, "
        "instead of the base tree's sources (default: the Debian mirror the tree came from)",
    )
    demo.set_defaults(func=run_demo)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM stops the demo the way Ctrl-C does: everything it started is stopped.
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace, out: Output) -> int:
    from atoll.demo.scenario import run_demo as scenario
    from atoll.demo.scenario import stop_demo

    if args.stop:
        if args.keep or args.fast or args.workdir:
            raise UsageError("--stop takes no other demo option")
        return stop_demo(Path(args.stop))
    if os.geteuid() != 0:
        raise UsageError(
            "atoll demo needs root: it boots devices with systemd-nspawn and runs podman",
            hint="run it with sudo (see docs/demo.md)",
        )
    base_tree = Path(args.base_tree) if args.base_tree else None
    if base_tree is not None and not (base_tree / "usr/lib/systemd/systemd").exists():
        raise UsageError(f"--base-tree {base_tree}: no usr/lib/systemd/systemd in it")
    signal.signal(signal.SIGTERM, _terminate)
    return scenario(
        Path(args.workdir) if args.workdir else None,
        keep=args.keep,
        fast=args.fast,
        base_tree=base_tree,
        cache=Path(args.cache) if args.cache else None,
        apt_source=args.apt_source,
    )
