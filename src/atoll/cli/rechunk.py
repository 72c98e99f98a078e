"""``atoll rechunk SRC DST``: an OS image rewritten as layers grouped for updates."""

from __future__ import annotations

import argparse
from typing import Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.errors import UsageError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName

_COMPRESSIONS = ("gzip", "zstd", "zstd:chunked")


def add_rechunk_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """--max-layers, --previous, --compression and --compression-level (shared with
    atoll build)."""
    from atoll.build.rechunk import DEFAULT_MAX_LAYERS

    parser.add_argument(
        f"--{prefix}max-layers",
        type=int,
        default=DEFAULT_MAX_LAYERS,
        metavar="N",
        help=f"write at most N layers (default {DEFAULT_MAX_LAYERS}, at least 4)",
    )
    parser.add_argument(
        "--previous",
        metavar="IMAGE",
        help="the previous version of the image (written by atoll rechunk or atoll build): "
        "keep its grouping so that unchanged groups keep their digests",
    )
    parser.add_argument(
        f"--{prefix}compression",
        choices=_COMPRESSIONS,
        default="gzip",
        help="how the layers are compressed (default gzip; zstd:chunked lets devices fetch "
        "only the files they lack)",
    )
    parser.add_argument(
        f"--{prefix}compression-level",
        type=int,
        metavar="N",
        help="compression level of the layers (gzip 1-9, default 6; zstd 1-19, default 3; "
        "zstd:chunked 1-19, default 19): higher moves fewer bytes to devices and takes "
        "longer to build",
    )


def rechunk_options(args: argparse.Namespace, ctx: SystemContext, prefix: str = "") -> Any:
    """The RechunkOptions the command line asks for; SOURCE_DATE_EPOCH clamps mtimes."""
    from atoll.build.layerwrite import encoder_named
    from atoll.build.rechunk import RechunkOptions

    key = prefix.replace("-", "_")
    epoch_text = ctx.environ.get("SOURCE_DATE_EPOCH")
    try:
        epoch = int(epoch_text) if epoch_text else None
    except ValueError:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={epoch_text!r} is not a number of seconds",
            hint="set it to e.g. $(git log -1 --format=%ct), or unset it",
        ) from None
    return RechunkOptions(
        max_layers=getattr(args, f"{key}max_layers"),
        previous=ImageName.parse(args.previous) if args.previous else None,
        epoch=epoch,
        encoder=encoder_named(
            getattr(args, f"{key}compression"), getattr(args, f"{key}compression_level")
        ),
    )


def register(commands: argparse._SubParsersAction[Any]) -> None:
    rechunk = commands.add_parser(
        "rechunk",
        help="rewrite an OS image as layers of files that change together",
        description="Reads SRC, groups its files by the package that owns them (big packages "
        "alone, small ones in stable buckets, files no package owns by directory) and writes "
        "DST as reproducible layers: an update changes only the layers of what changed. "
        "SOURCE_DATE_EPOCH, when set, clamps file times (else the image's creation time).",
    )
    add_global_options(rechunk)
    rechunk.add_argument("src", metavar="SRC", help="docker://…, oci:…, oci-archive:…, …")
    rechunk.add_argument("dst", metavar="DST", help="where to write the result")
    add_rechunk_options(rechunk)
    add_registry_options(rechunk)
    add_platform_options(rechunk)
    rechunk.set_defaults(func=_rechunk)


def _rechunk(args: argparse.Namespace, out: Output) -> int:
    from atoll.build.rechunk import rechunk_image

    src, dst = ImageName.parse(args.src), ImageName.parse(args.dst)
    ctx = system_context(args)
    result = rechunk_image(src, dst, ctx, rechunk_options(args, ctx), progress=out.progress())
    present = sum(1 for layer in result.layers if layer.present)
    size = sum(layer.size for layer in result.layers)
    lines = [
        f"Wrote {dst} ({result.digest}): {len(result.layers)} layers, {size} bytes, "
        f"{present} already there",
        f"  files grouped by {result.package_format} ({result.packages} packages)",
    ]
    if out.verbose:
        lines += [
            f"  {layer.digest.short}  {layer.size:>12}  {layer.group}" for layer in result.layers
        ]
    out.result(result.to_json(), "\n".join(lines))
    return 0
