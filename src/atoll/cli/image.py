"""``atoll image …``: copy, inspect, list tags, delete and sync images."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.errors import UsageError
from atoll.oci.manifest import Compression
from atoll.oci.transports import ImageName

if TYPE_CHECKING:
    from atoll.oci.imagecopy import CopyOptions, CopyResult

# Each subcommand imports what it runs (tests/cli/test_imports.py holds the
# import set of `atoll image copy`); atoll.oci.chunked.ZSTD_CHUNKED, spelled out
# so that a copy that converts nothing does not load the zstd:chunked code.
ZSTD_CHUNKED = "zstd:chunked"

_SizeUnits = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float) -> str:
    for unit in _SizeUnits:
        if abs(n) < 1024 or unit == _SizeUnits[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


#: The subcommands, in the order of ``atoll image --help``.
SUBCOMMANDS = ("copy", "inspect", "tags", "delete", "sync")


def register(commands: argparse._SubParsersAction[Any], only: str | None = None) -> None:
    """Register ``image`` and its subcommands; only the subcommand *only* when it is
    one of them (the one being run: the others' parsers are not needed)."""
    image = commands.add_parser("image", help="move and inspect OCI images")
    sub = image.add_subparsers(dest="image_command", metavar="COMMAND")
    sub.required = True
    wanted = (only,) if only in SUBCOMMANDS else SUBCOMMANDS
    if "copy" in wanted:
        _register_copy(sub)
    if "inspect" in wanted:
        _register_inspect(sub)
    if "tags" in wanted:
        _register_tags(sub)
    if "delete" in wanted:
        _register_delete(sub)
    if "sync" in wanted:
        _register_sync(sub)


def _register_copy(sub: argparse._SubParsersAction[Any]) -> None:
    copy = sub.add_parser(
        "copy",
        help="copy an image between registries, directories and archives",
        description="Copy SRC to DST. Names are TRANSPORT:DETAILS: docker://REF, "
        "oci:DIR[:REF], oci-archive:FILE[:REF], dir:DIR, containers-storage:REF.",
    )
    add_global_options(copy)
    copy.add_argument("source", metavar="SRC")
    copy.add_argument("destination", metavar="DST")
    copy.add_argument(
        "--digestfile", metavar="FILE", help="write the digest of the copied manifest to FILE"
    )
    _add_copy_options(copy)
    copy.set_defaults(func=_copy)


def _register_inspect(sub: argparse._SubParsersAction[Any]) -> None:
    inspect = sub.add_parser("inspect", help="show an image's manifest, config and layers")
    add_global_options(inspect)
    inspect.add_argument("name", metavar="NAME")
    inspect.add_argument(
        "--raw", action="store_true", help="print the manifest (or index) exactly as stored"
    )
    inspect.add_argument("--config", action="store_true", help="print the image config")
    inspect.add_argument("--no-tags", action="store_true", help="do not list the repository's tags")
    inspect.add_argument(
        "-f",
        "--format",
        metavar="TEMPLATE",
        help="print TEMPLATE with {{.Field}} replaced by that field of the inspection "
        f"({', '.join(_FORMAT_FIELDS)}), e.g. '{{{{.Digest}}}}'",
    )
    add_registry_options(inspect)
    add_platform_options(inspect)
    inspect.set_defaults(func=_inspect)


def _register_tags(sub: argparse._SubParsersAction[Any]) -> None:
    tags = sub.add_parser("tags", help="list the tags of a repository or OCI layout")
    add_global_options(tags)
    tags.add_argument("name", metavar="NAME")
    add_registry_options(tags)
    add_platform_options(tags)
    tags.set_defaults(func=_tags)


def _register_delete(sub: argparse._SubParsersAction[Any]) -> None:
    delete = sub.add_parser("delete", help="delete an image from a registry or OCI layout")
    add_global_options(delete)
    delete.add_argument("name", metavar="NAME")
    delete.add_argument(
        "--all-tags",
        action="store_true",
        help="also delete the other tags of the same digest (a registry deletes by digest, "
        "which removes every tag of it; without this, such a delete is refused)",
    )
    add_registry_options(delete)
    add_platform_options(delete, transfers=False)
    delete.set_defaults(func=_delete)


def _register_sync(sub: argparse._SubParsersAction[Any]) -> None:
    sync = sub.add_parser(
        "sync",
        help="copy every tag of a repository, or the images a YAML file lists",
        description="SRC is docker://REPO (every tag), docker://REPO:TAG, or a YAML file "
        "as skopeo sync reads it. DST is docker://REGISTRY[/PREFIX] or dir:DIR.",
    )
    add_global_options(sync)
    sync.add_argument("source", metavar="SRC")
    sync.add_argument("destination", metavar="DST")
    sync.add_argument(
        "--scoped",
        action="store_true",
        help="keep the full source name (registry included) under DST",
    )
    sync.add_argument(
        "--keep-going",
        action="store_true",
        help="go on after an image fails; exit non-zero at the end",
    )
    sync.add_argument("--dry-run", action="store_true", help="list what would be copied")
    _add_copy_options(sync)
    sync.set_defaults(func=_sync)


def _add_copy_options(parser: argparse.ArgumentParser) -> None:
    """What copy and sync share: how to copy, and how to reach both ends."""
    parser.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="copy every image of an index, not just the host platform's",
    )
    parser.add_argument(
        "--preserve-digests", action="store_true", help="fail rather than change the image's digest"
    )
    parser.add_argument(
        "--dest-compress-format",
        choices=[c.value for c in Compression] + [ZSTD_CHUNKED],
        help="re-compress layers in this format (zstd:chunked: zstd with a table of "
        "contents, for file-level partial pulls)",
    )
    parser.add_argument(
        "--parallel", type=int, default=6, metavar="N", help="blobs copied at once (default 6)"
    )
    add_registry_options(parser)
    add_registry_options(parser, "src-")
    add_registry_options(parser, "dest-")
    add_platform_options(parser)


def _copy_options(args: argparse.Namespace) -> CopyOptions:
    from atoll.oci.imagecopy import CopyOptions

    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    fmt = args.dest_compress_format
    return CopyOptions(
        all_images=args.all,
        preserve_digests=args.preserve_digests,
        dest_compression=Compression.ZSTD
        if fmt == ZSTD_CHUNKED
        else Compression(fmt)
        if fmt
        else None,
        zstd_chunked=fmt == ZSTD_CHUNKED,
    )


def _describe_copy(result: CopyResult) -> str:
    parts = [f"{result.blobs_copied} copied"]
    if result.blobs_skipped:
        parts.append(f"{result.blobs_skipped} already there")
    if result.blobs_mounted:
        parts.append(f"{result.blobs_mounted} mounted")
    return (
        f"Copied {result.source} to {result.destination}\n"
        f"  digest {result.digest}, {result.blobs} blobs ({', '.join(parts)}), "
        f"{human_size(result.bytes_copied)} transferred"
    )


def _copy(args: argparse.Namespace, out: Output) -> int:
    from atoll.oci.imagecopy import copy_image

    src = ImageName.parse(args.source)
    dst = ImageName.parse(args.destination)
    result = copy_image(
        src,
        dst,
        src_ctx=system_context(args, "src-"),
        dst_ctx=system_context(args, "dest-"),
        options=_copy_options(args),
        progress=out.progress(),
        digestfile=Path(args.digestfile) if args.digestfile else None,
    )
    # -q: only the result, the digest (as --digestfile writes it).
    human = str(result.digest) if out.quiet else _describe_copy(result)
    out.result(result.to_json(), human)
    return 0


#: The fields ``--format`` knows: skopeo inspect's single fields.
_FORMAT_FIELDS = (
    "Name",
    "Digest",
    "RepoTags",
    "Created",
    "DockerVersion",
    "Labels",
    "Architecture",
    "Os",
    "Layers",
    "Env",
)
#: A template action; compiled on first use (re caches it), not at start-up.
_ACTION = r"\{\{-?\s*(.*?)\s*-?\}\}"


def _check_format(template: str) -> None:
    """Refuse a template with anything but ``{{.Field}}`` actions, before any I/O."""
    for match in re.finditer(_ACTION, template):
        field = match.group(1).removeprefix(".")
        if not match.group(1).startswith(".") or field not in _FORMAT_FIELDS:
            raise UsageError(
                f"--format: cannot evaluate {match.group(0)}: "
                f"only {{{{.Field}}}} with a field of {', '.join(_FORMAT_FIELDS)}"
            )
    if "{{" in re.sub(_ACTION, "", template):
        raise UsageError(f"--format: unclosed action in {template!r}")


def _go_text(value: Any) -> str:
    """*value* the way a Go template prints it: lists as ``[a b]``, maps as
    ``map[k:v]`` with sorted keys, nothing for a missing value."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "[" + " ".join(_go_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_text(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def format_inspection(template: str, data: dict[str, Any]) -> str:
    """*template* with each ``{{.Field}}`` replaced by that field of *data*."""
    fields = {**data, "DockerVersion": data.get("DockerVersion", "")}
    return re.sub(_ACTION, lambda m: _go_text(fields.get(m.group(1).removeprefix("."))), template)


def _inspect(args: argparse.Namespace, out: Output) -> int:
    from atoll.oci.imageinspect import (
        inspect_image,
        read_config,
        read_raw_manifest,
        select_manifest,
    )
    from atoll.oci.transports import open_source

    name = ImageName.parse(args.name)
    ctx = system_context(args)
    if args.format is not None:
        if args.raw or args.config or out.json:
            raise UsageError("--format does not go with --raw, --config or --json")
        _check_format(args.format)
        info = inspect_image(name, ctx, list_tags=not args.no_tags and "RepoTags" in args.format)
        out.result(None, format_inspection(args.format, info.to_json()))
        return 0
    if args.raw and not args.config:
        sys.stdout.buffer.write(read_raw_manifest(name, ctx))
        sys.stdout.flush()
        return 0
    if args.config:
        with open_source(name, ctx) as source:
            _, manifest = select_manifest(source, ctx.platform)
            config = read_config(source, manifest)
        sys.stdout.buffer.write(config if args.raw else config + b"\n")
        sys.stdout.flush()
        return 0
    info = inspect_image(name, ctx, list_tags=not args.no_tags)
    out.result(info.to_json(), _describe_inspection(info.to_json()))
    return 0


def _describe_inspection(data: dict[str, Any]) -> str:
    lines = [
        f"Name:          {data['Name']}",
        f"Digest:        {data['Digest']}",
        f"Media type:    {data['MediaType']}",
        f"Platform:      {data['Os']}/{data['Architecture']}"
        + (f"/{data['Variant']}" if data["Variant"] else ""),
        f"Created:       {data['Created'] or '-'}",
        f"Version:       {data['Version'] or '-'}",
        f"Bootable:      {'yes' if data['Bootable'] else 'no'}",
    ]
    if data["RepoTags"]:
        lines.append(f"Tags:          {', '.join(data['RepoTags'])}")
    total = sum(layer["Size"] for layer in data["LayersData"])
    lines.append(f"Layers:        {len(data['LayersData'])} ({human_size(total)})")
    lines.extend(
        f"  {layer['Digest']}  {human_size(layer['Size']):>10}  {layer['MIMEType']}"
        for layer in data["LayersData"]
    )
    if data["Labels"]:
        lines.append("Labels:")
        lines.extend(f"  {k}={v}" for k, v in sorted(data["Labels"].items()))
    return "\n".join(lines)


def _tags(args: argparse.Namespace, out: Output) -> int:
    from atoll.oci.catalog import list_tags

    name = ImageName.parse(args.name)
    tags = list_tags(name, system_context(args))
    out.result({"Repository": str(name), "Tags": tags}, "\n".join(tags))
    return 0


def _delete(args: argparse.Namespace, out: Output) -> int:
    from atoll.oci.catalog import delete_image

    name = ImageName.parse(args.name)
    deletion = delete_image(name, system_context(args), all_tags=args.all_tags)
    text = f"Deleted {name} ({deletion.digest})"
    if len(deletion.tags) > 1:
        text += f"\n  tags removed with it: {', '.join(deletion.tags)}"
    out.result({"deleted": str(name), "digest": deletion.digest, "tags": list(deletion.tags)}, text)
    return 0


def _sync(args: argparse.Namespace, out: Output) -> int:
    from atoll.oci.sync import plan_from_repository, plan_from_yaml, run_sync

    src_ctx = system_context(args, "src-")
    if args.source.startswith("docker://"):
        items = plan_from_repository(args.source, args.destination, src_ctx, scoped=args.scoped)
    else:
        items = plan_from_yaml(Path(args.source), args.destination, src_ctx, scoped=args.scoped)
    if args.dry_run:
        plan = [{"source": str(i.source), "destination": str(i.destination)} for i in items]
        out.result(plan, "\n".join(f"{p['source']} -> {p['destination']}" for p in plan))
        return 0
    outcomes = run_sync(
        items,
        system_context(args, "dest-"),
        _copy_options(args),
        keep_going=args.keep_going,
        progress_for=lambda _item: out.progress(),
    )
    failed = [o for o in outcomes if o.error is not None]
    lines = [
        f"{'FAILED' if o.error else 'ok':6} {o.item.source} -> {o.item.destination}"
        + (f": {o.error.message}" if o.error else "")
        for o in outcomes
    ]
    lines.append(f"{len(outcomes) - len(failed)} of {len(items)} images synced")
    out.result([o.to_json() for o in outcomes], "\n".join(lines))
    if failed:
        return max(o.error.exit_code for o in failed if o.error)
    return 0
