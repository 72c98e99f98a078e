"""``atoll base create``: a base image for blueprint builds from distribution packages."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    base = commands.add_parser(
        "base",
        help="make base images for blueprint builds",
        description="Base images for atoll build --blueprint, from distribution packages.",
    )
    verbs = base.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    create = verbs.add_parser(
        "create",
        help="make a bootable-ready base from distribution packages",
        description="debootstrap (debian, ubuntu) or dnf --installroot (fedora and kin, where "
        "the host has dnf) installs systemd, a kernel, python3 with the packages atoll imports "
        "on a device and the given packages; atoll adds its own files and writes the image to "
        "IMAGE. The tree is cached by recipe; the same packages and SOURCE_DATE_EPOCH give the "
        "same digest.",
    )
    add_global_options(create)
    add_registry_options(create)
    add_platform_options(create)
    create.add_argument("--distro", required=True, help="debian, ubuntu, fedora, ...")
    create.add_argument("--release", required=True, help="e.g. bookworm, 40")
    create.add_argument("--mirror", metavar="URL", help="package mirror (default: the distro's)")
    create.add_argument(
        "--packages",
        nargs="+",
        default=[],
        metavar="PACKAGE",
        help="more packages to install",
    )
    create.add_argument(
        "--no-kernel",
        action="store_true",
        help="no kernel: a base for container-boot devices only (the lint will fail)",
    )
    create.add_argument(
        "--cache",
        metavar="DIR",
        help="tree cache (default: $XDG_CACHE_HOME/atoll/base; as root /var/cache/atoll/base)",
    )
    create.add_argument("-t", "--tag", required=True, metavar="IMAGE", help="where to write it")
    create.set_defaults(func=_run_create)


def _run_create(args: argparse.Namespace, out: Output) -> int:
    from atoll.build.base import BaseSpec, create_base

    spec = BaseSpec(
        distro=args.distro,
        release=args.release,
        mirror=args.mirror,
        packages=tuple(p for item in args.packages for p in item.split(",") if p),
        kernel=not args.no_kernel,
    )
    made = create_base(
        spec,
        args.tag,
        cache=Path(args.cache) if args.cache else None,
        ctx=system_context(args),
    )
    out.result(
        {"image": args.tag, "digest": str(made.digest), "packages": list(made.packages)},
        f"{args.tag}@{made.digest}",
    )
    return 0
