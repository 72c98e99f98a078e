"""``atoll rechunk``: an image rewritten as layers of files that change together.

The order of work::

    1. read SRC's layers (verified) into one flat tree  (atoll.build.flattree)
    2. read its package database: who owns each file    (atoll.build.packages)
    3. plan the layout, keeping --previous's if given    (atoll.build.grouping)
    4. write each group as a reproducible layer          (atoll.build.layerwrite)
    5. a config with the new diff_ids, one history entry per layer and the
       layout label; an OCI manifest naming each layer's group; blobs the
       destination already has are not sent again; the tag is written last

The result holds the same tree as SRC: every file, link and device once (a
directory appears in each layer that holds something below it, always with the
same metadata), mtimes clamped to the epoch.  The scratch directory (under
``--tmpdir``, else /var/tmp) holds the file contents and one layer at a time,
and is removed afterwards.
"""

from __future__ import annotations

import copy
import json
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from atoll.build.flattree import FlatTree, read_flat_tree
from atoll.build.grouping import (
    GROUP_ANNOTATION,
    LAYOUT_LABEL,
    Group,
    Layout,
    group_files,
    plan_layout,
)
from atoll.build.layerwrite import ENCODERS, LayerEncoder, with_parents, write_tar
from atoll.build.packages import Ownership, read_ownership
from atoll.errors import RechunkError, from_oserror
from atoll.fsutil import remove_tree
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imageinspect import read_config, select_manifest
from atoll.oci.manifest import Descriptor, MediaType, canonical_json, parse_config
from atoll.oci.transports import ImageDestination, ImageName, open_destination, open_source
from atoll.progress import NullProgress, ProgressSink

DEFAULT_MAX_LAYERS = 64
_PIECE = 1 << 20
_CREATED_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$")


@dataclass(frozen=True)
class RechunkOptions:
    max_layers: int = DEFAULT_MAX_LAYERS
    #: The previous version of the image, whose layout the result keeps.
    previous: ImageName | None = None
    #: Clamp mtimes to this (SOURCE_DATE_EPOCH); None: the image's creation time.
    epoch: int | None = None
    encoder: LayerEncoder = field(default_factory=lambda: ENCODERS["gzip"])


@dataclass(frozen=True)
class WrittenLayer:
    group: str
    digest: Digest
    diff_id: Digest
    size: int
    files: int
    content_bytes: int
    #: True when the destination already had this blob (an unchanged group).
    present: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "digest": str(self.digest),
            "diff_id": str(self.diff_id),
            "size": self.size,
            "files": self.files,
            "content_bytes": self.content_bytes,
            "present": self.present,
        }


@dataclass
class RechunkResult:
    source: str
    destination: str
    digest: str = ""
    package_format: str = ""
    packages: int = 0
    layout: Layout | None = None
    layers: list[WrittenLayer] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": self.digest,
            "package_format": self.package_format,
            "packages": self.packages,
            "layout": json.loads(self.layout.to_label()) if self.layout else None,
            "layers": [layer.to_json() for layer in self.layers],
            "size": sum(layer.size for layer in self.layers),
            "layers_present": sum(1 for layer in self.layers if layer.present),
        }


def parse_created(text: str | None) -> int | None:
    """Seconds since the epoch of an image's ``created`` (RFC 3339), None if absent."""
    match = _CREATED_RE.match(text or "")
    if match is None:
        return None
    zone = match.group(2) or "Z"
    stamp = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return int(stamp.timestamp())


def read_layout(name: ImageName, ctx: SystemContext) -> Layout:
    """The layout label of an image written by rechunk (its config only is read)."""
    with open_source(name, ctx) as source:
        _, manifest = select_manifest(source, ctx.platform)
        config = parse_config(read_config(source, manifest), where=source.description)
    label = config.labels.get(LAYOUT_LABEL)
    if label is None:
        raise RechunkError(
            f"{name}: the image has no label {LAYOUT_LABEL}: it was not written by atoll rechunk",
            hint="give the previous version written by atoll rechunk or atoll build, "
            "or leave out --previous",
        )
    return Layout.from_label(label, str(name))


def _assignable(tree: FlatTree) -> tuple[dict[str, int], dict[str, str]]:
    """Sizes of the paths a group takes (all but directories with something
    below them), and for the other names of hard-linked files the name they follow."""
    parents = {p.rpartition("/")[0] for p in tree.entries}
    sizes = {
        path: entry.size
        for path, entry in tree.entries.items()
        if not (entry.is_dir and path in parents)
    }
    names: dict[str, list[str]] = {}
    for path, entry in tree.entries.items():
        if entry.kind == tarfile.REGTYPE:
            names.setdefault(entry.inode, []).append(path)
    follow: dict[str, str] = {}
    for paths in names.values():
        if len(paths) > 1:
            lead = min(paths)
            follow.update({p: lead for p in paths if p != lead})
    return sizes, follow


def plan_groups(
    tree: FlatTree, ownership: Ownership, max_layers: int, previous: Layout | None
) -> tuple[Layout, list[Group]]:
    sizes, follow = _assignable(tree)
    package_sizes = dict.fromkeys(ownership.packages, 0)
    for path, package in ownership.owners.items():
        package_sizes[package] = package_sizes.get(package, 0) + sizes.get(path, 0)
    layout = plan_layout(package_sizes, max_layers, previous)
    return layout, group_files(sizes, ownership.owners, layout, follow=follow)


def _blob_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while piece := fh.read(_PIECE):
            yield piece


def _config(tree: FlatTree, layout: Layout, layers: list[WrittenLayer]) -> bytes:
    data: dict[str, Any] = copy.deepcopy(json.loads(tree.config.raw))
    inner = data.setdefault("config", {})
    if not isinstance(inner, dict):
        inner = data["config"] = {}
    labels = dict(inner.get("Labels") or {})
    labels[LAYOUT_LABEL] = layout.to_label()
    inner["Labels"] = labels
    data["rootfs"] = {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in layers]}
    created = data.get("created")
    data["history"] = [
        {
            **({"created": created} if created else {}),
            "created_by": f"atoll rechunk: {layer.group}",
            "comment": f"{layer.files} entries, {layer.content_bytes} bytes",
        }
        for layer in layers
    ]
    return canonical_json(data)


def _put(destination: ImageDestination, desc: Descriptor, path: Path | None, raw: bytes) -> bool:
    """Send a blob unless the destination has it; True when it was there already."""
    if destination.has_blob(desc):
        return True
    destination.put_blob(desc, _blob_chunks(path) if path is not None else iter([raw]))
    return False


def rechunk_image(
    src: ImageName,
    dst: ImageName,
    ctx: SystemContext,
    options: RechunkOptions | None = None,
    *,
    dst_ctx: SystemContext | None = None,
    progress: ProgressSink | None = None,
) -> RechunkResult:
    """Rewrite *src* as layers grouped by what changes together, to *dst*."""
    options = options or RechunkOptions()
    progress = progress or NullProgress()
    dst_ctx = dst_ctx or ctx
    previous = read_layout(options.previous, ctx) if options.previous is not None else None
    parent = ctx.tmpdir or Path("/var/tmp")
    try:
        scratch = Path(tempfile.mkdtemp(prefix="atoll-rechunk-", dir=parent))
    except OSError as exc:
        raise from_oserror(exc, f"a scratch directory in {parent}") from exc
    try:
        tree = read_flat_tree(src, ctx, scratch, progress)
        ownership = read_ownership(tree)
        layout, groups = plan_groups(tree, ownership, options.max_layers, previous)
        epoch = options.epoch
        if epoch is None:
            epoch = parse_created(tree.config.created)
        result = RechunkResult(
            str(src),
            str(dst),
            package_format=ownership.format.value,
            packages=len(ownership.packages),
            layout=layout,
        )
        _write(tree, groups, layout, epoch, options.encoder, dst, dst_ctx, progress, result)
        return result
    finally:
        remove_tree(scratch)


def _write(
    tree: FlatTree,
    groups: list[Group],
    layout: Layout,
    epoch: int | None,
    encoder: LayerEncoder,
    dst: ImageName,
    ctx: SystemContext,
    progress: ProgressSink,
    result: RechunkResult,
) -> None:
    clamp = epoch if epoch is not None else 1 << 62
    descs: list[Descriptor] = []
    progress.begin("rechunk", f"Writing {dst} as {len(groups)} layers", str(dst), len(groups))
    ok = False
    try:
        with open_destination(dst, ctx) as destination:
            for group in groups:
                progress.subtask(group.name, "layer", f"layer {group.name}", group.size)
                tar_path = tree.scratch / "layer.tar"
                blob_path = tree.scratch / "layer.blob"
                write_tar(tree, with_parents(tree, group.paths, clamp), clamp, tar_path)
                encoded = encoder.encode(tar_path, blob_path)
                desc = Descriptor(
                    encoder.media_type,
                    Digest.parse(str(encoded.digest)),
                    encoded.size,
                    annotations={**encoded.annotations, GROUP_ANNOTATION: group.name},
                )
                present = _put(destination, desc, blob_path, b"")
                result.layers.append(
                    WrittenLayer(
                        group.name,
                        desc.digest,
                        Digest.parse(str(encoded.diff_id)),
                        encoded.size,
                        len(group.paths),
                        group.size,
                        present,
                    )
                )
                descs.append(desc)
                tar_path.unlink()
                blob_path.unlink()
                progress.advance(group.name, group.size)
                progress.done(group.name, cached=present)
            config = _config(tree, layout, result.layers)
            config_desc = Descriptor(MediaType.OCI_CONFIG.value, Digest.of(config), len(config))
            _put(destination, config_desc, None, config)
            manifest: dict[str, Any] = {
                "schemaVersion": 2,
                "mediaType": MediaType.OCI_MANIFEST.value,
                "config": config_desc.to_json(),
                "layers": [d.to_json() for d in descs],
            }
            if tree.manifest.annotations:
                manifest["annotations"] = dict(tree.manifest.annotations)
            raw = canonical_json(manifest)
            destination.put_manifest(raw, MediaType.OCI_MANIFEST.value, top_level=True)
            destination.commit()
            result.digest = str(Digest.of(raw))
        ok = True
    finally:
        progress.end(ok)
