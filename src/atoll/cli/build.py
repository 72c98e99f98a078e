"""``atoll build`` (Containerfile or blueprint) and ``atoll lint``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.cli.rechunk import add_rechunk_options, rechunk_options
from atoll.errors import LintFailedError, UsageError
from atoll.oci.transports import ImageName

_NETWORKS = ("private", "host", "none")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    build = commands.add_parser(
        "build",
        help="build a bootable image from a Containerfile or a blueprint",
        description="podman runs the build steps; atoll adds its units and early-boot hook "
        "where the image lacks them, lints the result and writes it to IMAGE "
        "(any atoll image name: docker://, oci:, oci-archive:, dir:, containers-storage:).",
    )
    add_global_options(build)
    build.add_argument("context", nargs="?", metavar="CONTEXT", help="build context directory")
    build.add_argument("-f", "--file", metavar="CONTAINERFILE", help="the Containerfile")
    build.add_argument("--blueprint", metavar="FILE", help="an Image Builder blueprint (TOML)")
    build.add_argument("--base", metavar="IMAGE", help="the base image of a blueprint build")
    build.add_argument("-t", "--tag", metavar="IMAGE", help="where to write the result")
    build.add_argument(
        "--network",
        choices=_NETWORKS,
        help="network of RUN steps (podman build --network); host reaches this machine's "
        "loopback, e.g. a local package mirror",
    )
    build.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep podman's store and the base image here between builds (default: a "
        "fresh directory, removed afterwards)",
    )
    build.add_argument(
        "--isolation",
        choices=("oci", "chroot", "rootless"),
        help="podman build --isolation for RUN steps",
    )
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    build.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    build.add_argument(
        "--no-atoll",
        action="store_true",
        help="do not add atoll, its units and its early-boot hook",
    )
    build.add_argument("--no-lint", action="store_true", help="do not lint the result")
    build.add_argument(
        "--no-rechunk",
        action="store_true",
        help="write the layers as podman built them, not grouped by package (see atoll rechunk)",
    )
    add_rechunk_options(build)
    build.add_argument(
        "--fatal-warnings", action="store_true", help="a lint warning fails the build too"
    )
    build.add_argument(
        "--print-containerfile",
        action="store_true",
        help="blueprint builds: print the Containerfile and stop (reads the base image only)",
    )
    add_registry_options(build)
    add_platform_options(build)
    build.set_defaults(func=_build)

    lint = commands.add_parser(
        "lint",
        help="check that an image is bootable and will update well",
        description="Fatal findings mean a device cannot boot or update the image; "
        "warnings mean it will, with surprises. Exit code 69 when the lint fails.",
    )
    add_global_options(lint)
    lint.add_argument("name", metavar="IMAGE", help="docker://…, oci:…, oci-archive:…, …")
    lint.add_argument(
        "--fatal-warnings", action="store_true", help="fail on warnings as well as fatal findings"
    )
    lint.add_argument(
        "--max-layer-share",
        type=_percent,
        default=25.0,
        metavar="PERCENT",
        help="warn when one layer holds more than PERCENT of an image of 32 MiB or more "
        "(default 25)",
    )
    lint.add_argument(
        "--secure-boot",
        action="store_true",
        help="also check that the image can boot with Secure Boot on (a signed kernel)",
    )
    add_registry_options(lint)
    add_platform_options(lint)
    lint.set_defaults(func=_lint)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share in percent (0 to 100)")
    return value


def _settings(args: argparse.Namespace, ctx: Any) -> Any:
    from atoll.build.podman_build import BuildSettings

    for value in (*args.build_arg, *args.label):
        if "=" not in value:
            raise UsageError(f"{value!r}: write KEY=VALUE")
    return BuildSettings(
        network=args.network,
        workdir=Path(args.workdir) if args.workdir else None,
        build_args=tuple(args.build_arg),
        labels=tuple(args.label),
        add_atoll=not args.no_atoll,
        lint=not args.no_lint,
        fatal_warnings=args.fatal_warnings,
        isolation=args.isolation,
        rechunk=None if args.no_rechunk else rechunk_options(args, ctx),
    )


def _build(args: argparse.Namespace, out: Output) -> int:
    from atoll.build.podman_build import build_blueprint, build_containerfile

    if args.blueprint and args.file:
        raise UsageError("give either -f CONTAINERFILE or --blueprint FILE, not both")
    if not args.blueprint and args.base:
        raise UsageError("--base is for blueprint builds (--blueprint FILE)")
    if not args.tag and not args.print_containerfile:
        raise UsageError("-t IMAGE is required: where to write the result")
    target = ImageName.parse(args.tag) if args.tag else None
    ctx = system_context(args)
    if args.no_rechunk and args.previous:
        raise UsageError("--previous is for rechunking; it cannot go with --no-rechunk")
    settings = _settings(args, ctx)
    progress = out.progress()

    def echo(line: str) -> None:
        if out.verbose or out.debug:
            sys.stderr.write(line + "\n")

    try:
        if args.blueprint:
            from atoll.build.blueprint import load_blueprint

            if not args.base:
                raise UsageError("--blueprint needs --base IMAGE: the image to build on")
            if args.context:
                raise UsageError("a blueprint build has no CONTEXT argument")
            blueprint = load_blueprint(Path(args.blueprint))
            for warning in blueprint.warnings:
                sys.stderr.write(f"atoll: warning: {warning}\n")
            result = build_blueprint(
                blueprint,
                ImageName.parse(args.base),
                target,
                ctx,
                settings,
                progress=progress,
                on_output=echo,
                plan_only=args.print_containerfile,
            )
            if args.print_containerfile:
                out.result({"containerfile": result.containerfile}, result.containerfile)
                return 0
        else:
            if args.print_containerfile:
                raise UsageError("--print-containerfile is for blueprint builds")
            context = Path(args.context or ".")
            containerfile = Path(args.file) if args.file else _find_containerfile(context)
            assert target is not None
            result = build_containerfile(
                containerfile, context, target, ctx, settings, progress=progress, on_output=echo
            )
    except LintFailedError as exc:
        _show_failed_lint(exc, out)
        raise
    lines = [f"Built {result.image} ({result.digest}) in {result.seconds:.1f} s"]
    if result.added:
        lines.append("  atoll added: " + ", ".join(result.added))
    lines.extend(f"  note: {n}" for n in result.notes)
    if result.rechunk is not None:
        lines.append(
            f"  {len(result.rechunk.layers)} layers, files grouped by "
            f"{result.rechunk.package_format} ({result.rechunk.packages} packages)"
        )
    if result.lint is not None:
        lines.append("  " + result.lint.to_text().replace("\n", "\n  "))
    out.result(result.to_json(), "\n".join(lines))
    return 0


def _show_failed_lint(exc: LintFailedError, out: Output) -> None:
    from atoll.build.lint import LintReport

    if isinstance(exc.report, LintReport):
        out.result({"lint": exc.report.to_json()}, exc.report.to_text())


def _find_containerfile(context: Path) -> Path:
    for name in ("Containerfile", "Dockerfile"):
        if (context / name).is_file():
            return context / name
    raise UsageError(
        f"no Containerfile or Dockerfile in {context}", hint="name one with -f CONTAINERFILE"
    )


def _lint(args: argparse.Namespace, out: Output) -> int:
    from atoll.build.lint import lint_image

    name = ImageName.parse(args.name)
    report = lint_image(
        name,
        system_context(args),
        fatal_warnings=args.fatal_warnings,
        progress=out.progress(),
        max_layer_share=args.max_layer_share / 100,
        secure_boot=args.secure_boot,
    )
    out.result(report.to_json(), report.to_text())
    if not report.ok:
        raise LintFailedError(
            f"{name}: the image fails the lint ({report.fatal} fatal, "
            f"{report.warnings} warning(s))",
            report=report,
        )
    return 0
