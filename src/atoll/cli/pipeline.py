"""``atoll promote``, ``atoll mirror``, ``atoll delta create``, ``atoll bundle …``."""

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
from atoll.errors import UsageError
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport


def register(commands: argparse._SubParsersAction[Any]) -> None:
    promote = commands.add_parser(
        "promote",
        help="copy an image by digest into another repository and move its tags there",
        description="Copy IMAGE@DIGEST to REPO, check its digest (and its signature when "
        "--policy is given), then move each tag; a tag is never moved to an older "
        "org.opencontainers.image.version unless --allow-downgrade. Each promotion is "
        "recorded in REPO:sha256-HEX.promotion.",
    )
    add_global_options(promote)
    promote.add_argument("image", metavar="IMAGE@DIGEST", help="docker://REPO@sha256:…")
    promote.add_argument("--to", required=True, metavar="REPO", help="docker://HOST/REPO")
    promote.add_argument(
        "--tags", required=True, metavar="TAGS", help="comma-separated, e.g. 1.2.3,1.2,1,stable"
    )
    promote.add_argument(
        "--allow-downgrade", action="store_true", help="move tags even to an older version"
    )
    promote.add_argument(
        "--policy", metavar="FILE", help="trust policy the source image must satisfy"
    )
    promote.add_argument("--by", metavar="WHO", help="who promotes (default USER@HOST)")
    _two_registries(promote)
    promote.set_defaults(func=_promote)

    mirror = commands.add_parser(
        "mirror",
        help="bring repository DST in step with SRC (only tags whose digest changed)",
    )
    add_global_options(mirror)
    mirror.add_argument("source", metavar="SRC", help="docker://HOST/REPO")
    mirror.add_argument("destination", metavar="DST", help="docker://HOST/REPO")
    mirror.add_argument("--tags", metavar="REGEX", help="only tags this regular expression finds")
    mirror.add_argument(
        "--with-signatures",
        action="store_true",
        help="copy the sha256-DIGEST.sig signatures of the mirrored digests too",
    )
    mirror.add_argument(
        "--keep-going", action="store_true", help="go on with the other tags after a failure"
    )
    _two_registries(mirror)
    mirror.set_defaults(func=_mirror)

    bundle = commands.add_parser("bundle", help="offline bundles for devices without network")
    sub = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND")
    sub.required = True
    create = sub.add_parser("create", help="write an OS image (and what it binds) to one file")
    add_global_options(create)
    create.add_argument("image", metavar="IMAGE", help="docker://HOST/REPO:TAG")
    create.add_argument("-o", "--output", required=True, metavar="FILE")
    create.add_argument(
        "--with-bound-images",
        action="store_true",
        help="add the images the OS image binds (/usr/lib/bootc/bound-images.d)",
    )
    create.add_argument(
        "--delta-from",
        "--from",
        dest="from_image",
        metavar="OLD_IMAGE",
        help="carry only what a device running OLD_IMAGE lacks: per-file deltas and the "
        "missing files of zstd:chunked layers, whole layers where neither helps",
    )
    create.add_argument("--key", metavar="KEY", help="sign the bundle with this private key")
    create.add_argument("--passphrase-file", metavar="FILE", help="passphrase of the key")
    add_registry_options(create)
    add_platform_options(create)
    create.set_defaults(func=_bundle_create)

    apply = sub.add_parser(
        "apply", help="verify a bundle and stage its OS image on a device, offline"
    )
    add_global_options(apply)
    apply.add_argument("file", metavar="FILE")
    apply.add_argument("--sysroot", default="/sysroot", metavar="DIR")
    apply.add_argument("--key", metavar="PUB", help="public key the bundle must be signed with")
    apply.add_argument(
        "--policy",
        metavar="FILE",
        help="trust policy instead of the booted deployment's /etc/containers/policy.json",
    )
    apply.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="stage the OS image even if its version is older than the device's",
    )
    apply.add_argument("--etc-merge", default="keep-local", metavar="STRATEGY")
    apply.add_argument("--allow-no-kernel", action="store_true")
    apply.add_argument(
        "--allow-rolled-back",
        action="store_true",
        help="stage the OS image even if this device rolled back from it before",
    )
    add_platform_options(apply)
    apply.set_defaults(func=_bundle_apply)

    delta = commands.add_parser("delta", help="binary deltas between two OS images")
    dsub = delta.add_subparsers(dest="delta_command", metavar="COMMAND")
    dsub.required = True
    dcreate = dsub.add_parser(
        "create",
        help="publish the per-file deltas from OLD to NEW as an artifact referring to NEW",
        description="Compute, per file NEW changed, the smaller of a zstd patch against OLD's "
        "file and the file alone, keep those smaller than NEW's zstd:chunked frames, and push "
        "them to REPO as an OCI artifact whose subject is NEW (found by devices through the "
        "referrers API or the sha256-HEX referrers tag).",
    )
    add_global_options(dcreate)
    dcreate.add_argument("old", metavar="OLD", help="the image devices run, e.g. docker://…:1")
    dcreate.add_argument("new", metavar="NEW", help="the image they update to (zstd:chunked)")
    dcreate.add_argument("--to", required=True, metavar="REPO", help="docker://HOST/REPO")
    add_registry_options(dcreate)
    add_platform_options(dcreate)
    dcreate.set_defaults(func=_delta_create)

    inspect = sub.add_parser("inspect", help="show what a bundle holds")
    add_global_options(inspect)
    inspect.add_argument("file", metavar="FILE")
    inspect.set_defaults(func=_bundle_inspect)


def _two_registries(parser: argparse.ArgumentParser) -> None:
    add_registry_options(parser)
    add_registry_options(parser, "src-")
    add_registry_options(parser, "dest-")
    add_platform_options(parser)


def _registry_ref(text: str, what: str) -> ImageReference:
    name = ImageName.parse(text if "://" in text else f"docker://{text}")
    if name.transport is not Transport.DOCKER or name.reference is None:
        raise UsageError(f"{what} {text}: expected docker://HOST/REPO…")
    return name.reference


def _promote(args: argparse.Namespace, out: Output) -> int:
    from atoll.pipeline.mirror import repository_reference
    from atoll.pipeline.promote import parse_tags, promote
    from atoll.pipeline.trust import load_optional_policy

    source = _registry_ref(args.image, "IMAGE")
    result = promote(
        source,
        repository_reference(args.to, "--to"),
        parse_tags(args.tags),
        src_ctx=system_context(args, "src-"),
        dst_ctx=system_context(args, "dest-"),
        policy=load_optional_policy(Path(args.policy) if args.policy else None),
        allow_downgrade=args.allow_downgrade,
        by=args.by,
        progress=out.progress(),
    )
    lines = [f"Promoted {result.source} ({result.version or 'no version'}) to {result.repository}"]
    for move in result.tags:
        was = (
            f" (was {move.previous_version or move.previous_digest})"
            if move.previous_digest
            else ""
        )
        lines.append(f"  {move.tag}: {move.action}{was}")
    lines.append(f"  signatures: {result.signatures}; recorded in {result.record}")
    out.result(result.to_json(), "\n".join(lines))
    return 0


def _mirror(args: argparse.Namespace, out: Output) -> int:
    from atoll.errors import PromotionError
    from atoll.pipeline.mirror import mirror, repository_reference

    result = mirror(
        repository_reference(args.source, "SRC"),
        repository_reference(args.destination, "DST"),
        src_ctx=system_context(args, "src-"),
        dst_ctx=system_context(args, "dest-"),
        tags=args.tags,
        with_signatures=args.with_signatures,
        keep_going=args.keep_going,
    )
    lines = [
        f"{t.tag}: {t.action}"
        + ("" if t.signatures == "skipped" else f", signatures {t.signatures}")
        for t in result.tags
    ]
    lines.append(f"{result.copied} of {len(result.tags)} tags copied to {result.destination}")
    out.result(result.to_json(), "\n".join(lines))
    if result.failed:
        first = result.failed[0]
        raise PromotionError(
            f"{len(result.failed)} tag(s) failed to mirror; {first.tag}: {first.error}"
        )
    return 0


def _bundle_create(args: argparse.Namespace, out: Output) -> int:
    from atoll.pipeline.bundlecreate import create_bundle

    key = None
    if args.key:
        from atoll.pipeline.keys import load_private_key, read_passphrase

        passphrase = read_passphrase(Path(args.passphrase_file)) if args.passphrase_file else None
        key = load_private_key(Path(args.key), passphrase)
    info = create_bundle(
        _registry_ref(args.image, "IMAGE"),
        Path(args.output),
        ctx=system_context(args),
        key=key,
        with_bound_images=args.with_bound_images,
        from_image=_registry_ref(args.from_image, "--delta-from") if args.from_image else None,
        progress=out.progress(),
    )
    out.result(info.to_json(), _describe(info))
    return 0


def _delta_create(args: argparse.Namespace, out: Output) -> int:
    from atoll.pipeline.deltacreate import create_delta, iter_summary

    summary = create_delta(
        ImageName.parse(args.old),
        ImageName.parse(args.new),
        ImageName.parse(args.to),
        system_context(args),
    )
    doc = {
        "delta": str(summary.manifest),
        "from": str(summary.old),
        "to": str(summary.new),
        "files": summary.files,
        "patched": summary.patched,
        "payloadBytes": summary.payload,
        "replacedFrameBytes": summary.frames,
        "tocPatches": summary.tocs,
    }
    out.result(doc, "\n".join(iter_summary(summary)))
    return 0


def _bundle_inspect(args: argparse.Namespace, out: Output) -> int:
    from atoll.pipeline.bundle import inspect_bundle

    info = inspect_bundle(Path(args.file))
    out.result(info.to_json(), _describe(info))
    return 0


def _bundle_apply(args: argparse.Namespace, out: Output) -> int:
    from atoll.cli.hostdevice import open_device
    from atoll.pipeline.bundleapply import apply_bundle
    from atoll.pipeline.trust import device_policy_path, load_optional_policy
    from atoll.sysroot.etcmerge import EtcMergeStrategy
    from atoll.updates import load_config, running_root

    try:
        strategy = EtcMergeStrategy(args.etc_merge)
    except ValueError:
        known = ", ".join(s.value for s in EtcMergeStrategy)
        raise UsageError(f"--etc-merge {args.etc_merge}: expected one of {known}") from None
    ctx = system_context(args)
    device = open_device(Path(args.sysroot), ctx, progress=out.progress())
    state = device.state()
    path = device_policy_path(
        state.path(state.booted or state.current), Path(args.policy) if args.policy else None
    )
    keys = []
    if args.key:
        from atoll.pipeline.keys import load_public_key

        keys.append(load_public_key(Path(args.key)))
    policy = load_optional_policy(path)
    # The [trust] settings of the device's /etc/atoll/updates.toml, as in an upgrade.
    trust = load_config(running_root(device)).trust
    result = apply_bundle(
        Path(args.file),
        device,
        policy=policy,
        keys=keys,
        max_signature_age=trust.max_signature_age,
        allow_downgrade=args.allow_downgrade or trust.allow_downgrade,
        stage_options={
            "allow_no_kernel": args.allow_no_kernel,
            "etc_strategy": strategy,
            "allow_rolled_back": args.allow_rolled_back,
        },
    )
    stage = result.stage
    version = f" {stage.image.version}" if stage.image.version else ""
    text = [
        f"Bundle {args.file}: signature {result.bundle.signature}; "
        f"{len(result.bundle.trust)} image(s) admitted"
        + (f" by {result.bundle.trust[0].policy}" if result.bundle.trust and path else ""),
        f"{stage.message.capitalize()}: {stage.image.name}{version} ({stage.image.digest})",
    ]
    text += [f"Bound image: {p}" for p in result.bound_images]
    out.result(result.to_json(), "\n".join(text))
    return 0


def _describe(info: Any) -> str:
    desc = info.description
    lines = [
        f"Bundle {info.path} (format {desc.version}, {info.size} bytes, {info.blobs} blobs, "
        f"{'signed' if info.signed else 'not signed'}), created {desc.created}",
        f"  bundle digest {info.manifest_digest}",
    ]
    for image in desc.images:
        signed = "signatures included" if image.signatures else "no signatures"
        unit = f" (from /{image.unit})" if image.unit else ""
        lines.append(f"  {image.role:5} {image.reference} {image.digest}{unit}; {signed}")
    if desc.delta:
        lines.append(
            f"  delta from {desc.delta.from_reference} ({desc.delta.from_digest}): "
            f"{len(desc.delta.omitted)} layer(s) left out, rebuilt on the device"
            + (
                f"; {len(desc.delta.ranges)} blob(s) as ranges, "
                f"{'a per-file delta' if desc.delta.files else 'no per-file delta'}"
                if desc.delta.per_file
                else ""
            )
        )
    return "\n".join(lines)
