"""``atoll workload …``: container workloads described by Quadlet units."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options


def register(commands: argparse._SubParsersAction[Any]) -> None:
    workload = commands.add_parser("workload", help="container workloads (Quadlet units)")
    sub = workload.add_subparsers(dest="workload_command", metavar="COMMAND")
    sub.required = True
    generate = sub.add_parser(
        "generate",
        help="write the systemd services for Quadlet units, as podman's quadlet does",
    )
    add_global_options(generate)
    generate.add_argument("outdir", metavar="OUTDIR", help="directory to write .service files to")
    generate.add_argument(
        "--root",
        action="append",
        metavar="DIR",
        help="read units from DIR instead of podman's directories (repeatable; first wins)",
    )
    generate.add_argument("--user", action="store_true", help="use the rootless directories")
    generate.set_defaults(func=_generate)


def _generate(args: argparse.Namespace, out: Output) -> int:
    from atoll.workloads import generate_services, load_units, write_services

    roots = [Path(r) for r in args.root] if args.root else None
    loaded = load_units(roots, user=args.user)
    services = generate_services(loaded, user=args.user)
    written = write_services(services, Path(args.outdir))
    data = {
        "written": [str(p) for p in written],
        "warnings": [str(w) for w in loaded.warnings],
    }
    out.result(data, "\n".join(f"wrote {p}" for p in written))
    return 0
