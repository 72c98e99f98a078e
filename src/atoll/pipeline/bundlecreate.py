"""``atoll bundle create``: an OS image, what it binds and their signatures, in one file.

The file's format is drawn in :mod:`atoll.pipeline.bundle`.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

from atoll.errors import BundleError, NotFoundError, from_oserror
from atoll.fsutil import TMP_PREFIX, atomic_writer, remove_tree
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import CopyOptions, CopyResult, copy_image
from atoll.oci.manifest import ImageManifest, MediaType, parse_config, parse_manifest
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.pipeline.bundle import (
    BUNDLE_ARTIFACT_TYPE,
    BUNDLE_REF,
    BUNDLE_SIG_REF,
    BUNDLE_VERSION,
    BUNDLE_VERSION_LAYERS,
    DELTA_SUFFIX,
    DESCRIPTION_MEDIA_TYPE,
    RANGES_MEDIA_TYPE,
    SPLIT_MEDIA_TYPE,
    BundleImage,
    BundleInfo,
    Delta,
    Description,
    OmittedLayer,
    inspect_bundle,
)
from atoll.pipeline.tarsplit import (
    SPLIT_VERSION,
    blob_chunks,
    blob_path,
    bound_images,
    final_files,
    layer_reader,
    tar_split,
    uncompressed,
)
from atoll.progress import ProgressSink
from atoll.timeutil import utc_timestamp


def create_bundle(
    image: ImageReference,
    output: Path,
    *,
    ctx: SystemContext,
    key: Any | None = None,
    with_bound_images: bool = False,
    from_image: ImageReference | None = None,
    progress: ProgressSink | None = None,
    now: datetime.datetime | None = None,
) -> BundleInfo:
    """Write the bundle for *image* (a registry image) to *output*; see the module."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=ctx.tmpdir or output.parent))
    except OSError as exc:
        raise from_oserror(exc, str(output.parent)) from exc
    try:
        layout = stage / "layout"
        images = [_add_image(layout, image, "os", None, ctx, progress)]
        os_manifest = _layout_manifest(layout, Digest.parse(images[0].digest))
        if with_bound_images:
            for unit, ref in bound_images(layer_reader(layout, os_manifest)):
                images.append(_add_image(layout, ref, "bound", unit, ctx, progress))
        delta = None
        if from_image is not None:
            delta = _make_delta(layout, stage, os_manifest, from_image, images, ctx)
        created = utc_timestamp(now)
        version = BUNDLE_VERSION if delta and delta.per_file else BUNDLE_VERSION_LAYERS
        description = Description(created, tuple(images), delta, version)
        manifest_digest = _write_bundle_manifest(layout, description)
        if key is not None:
            _sign_bundle(layout, key, images[0].reference, manifest_digest)
        from atoll.oci.transports.archive import write_layout_tar

        with atomic_writer(output) as fh:
            write_layout_tar(layout, fh)
    finally:
        remove_tree(stage)
    return inspect_bundle(output, ctx)


def _add_image(
    layout: Path,
    ref: ImageReference,
    role: str,
    unit: str | None,
    ctx: SystemContext,
    progress: ProgressSink | None,
) -> BundleImage:
    """Copy *ref* (this platform's image) and its signatures into *layout*."""
    result = _copy_in(ref, layout, str(ref), ctx, progress)
    sig_tag = f"{result.digest.algorithm}-{result.digest.hex}.sig"
    sig_ref = ImageReference(ref.registry, ref.repository, tag=sig_tag)
    try:
        signatures: str | None = str(_copy_in(sig_ref, layout, str(sig_ref), ctx).digest)
    except NotFoundError:
        signatures = None
    return BundleImage(role, str(ref), str(result.digest), signatures, unit)


def _copy_in(
    ref: ImageReference,
    layout: Path,
    ref_name: str,
    ctx: SystemContext,
    progress: ProgressSink | None = None,
) -> CopyResult:
    """Copy the registry image *ref* into the OCI layout *layout*, digests unchanged."""
    return copy_image(
        ImageName(Transport.DOCKER, reference=ref),
        ImageName(Transport.OCI, path=layout, ref_name=ref_name),
        src_ctx=ctx,
        options=CopyOptions(preserve_digests=True),
        progress=progress,
    )


def _layout_manifest(layout: Path, digest: Digest) -> ImageManifest:
    raw = blob_path(layout, digest).read_bytes()
    manifest = parse_manifest(raw, None, where=f"{layout}: {digest}")
    if not isinstance(manifest, ImageManifest):
        raise BundleError(f"{digest}: expected an image manifest")
    return manifest


def _make_delta(
    layout: Path,
    stage: Path,
    manifest: ImageManifest,
    from_image: ImageReference,
    images: list[BundleImage],
    ctx: SystemContext,
) -> Delta:
    old_layout = stage / "old"
    copied = _copy_in(from_image, old_layout, "old", ctx)
    old_manifest = _layout_manifest(old_layout, copied.digest)
    old_layers = {d.digest for d in old_manifest.layers}
    config = parse_config(
        blob_path(layout, manifest.config.digest).read_bytes(), where=str(manifest.config.digest)
    )
    candidates = [
        (desc, diff_id)
        for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        if desc.digest in old_layers
    ]
    omitted: list[OmittedLayer] = []
    if candidates:
        old_files = final_files(layer_reader(old_layout, old_manifest))
        for desc, diff_id in candidates:
            with uncompressed(blob_chunks(blob_path(layout, desc.digest)), desc) as fh:
                segments, size = tar_split(fh)
            if any(s[0] == "file" and old_files.get(s[1]) != s[3] for s in segments):
                continue  # OLD's tree changed a file of this layer: send the layer whole
            split = gzip.compress(
                json.dumps(
                    {
                        "version": SPLIT_VERSION,
                        "diffId": str(diff_id),
                        "size": size,
                        "segments": segments,
                    },
                    separators=(",", ":"),
                ).encode(),
                mtime=0,
            )
            split_digest = Digest.of(split)
            blob_path(layout, split_digest).write_bytes(split)
            omitted.append(OmittedLayer(str(desc.digest), str(diff_id), size, str(split_digest)))
    # The layers the device has none of the files of (or not at their paths):
    # what an upgrade from the registry reads of them (see bundledelta).
    from atoll.pipeline.bundledelta import plan_file_deltas, write_ranges

    files, extents = plan_file_deltas(
        layout, images[0].reference, old_layout, "old", stage / "scratch", ctx
    )
    left_out = {Digest.parse(o.digest) for o in omitted}
    ranges = tuple(
        write_ranges(layout, digest, spans)
        for digest, spans in sorted(extents.items())
        if digest not in left_out
    )
    if files is not None:
        _add_entry(
            layout,
            f"{ImageReference.parse(images[0].reference).name}:{files.algorithm}-"
            f"{files.hex}{DELTA_SUFFIX}",
            blob_path(layout, files).read_bytes(),
        )
    # A blob another image of the bundle uses stays in.
    needed: set[Digest] = set()
    for other in images[1:]:
        other_manifest = _layout_manifest(layout, Digest.parse(other.digest))
        needed.update(d.digest for d in other_manifest.blobs())
    # (A blob read from end to end is its own ranges blob.)
    needed.update(Digest.parse(r.blob) for r in ranges)
    for digest in left_out | {Digest.parse(r.digest) for r in ranges}:
        if digest not in needed:
            blob_path(layout, digest).unlink(missing_ok=True)
    return Delta(
        str(from_image),
        str(copied.digest),
        tuple(omitted),
        str(files) if files is not None else None,
        ranges,
    )


# --- the bundle manifest and its signature ----------------------------------------------


def _put_blob(layout: Path, data: bytes) -> Digest:
    digest = Digest.of(data)
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _add_entry(layout: Path, ref_name: str, raw: bytes) -> Digest:
    digest = _put_blob(layout, raw)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") != ref_name
    ] + [
        {
            "mediaType": MediaType.OCI_MANIFEST.value,
            "digest": str(digest),
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }
    ]
    index_path.write_bytes(json.dumps(index, separators=(",", ":")).encode())
    return digest


def _write_bundle_manifest(layout: Path, description: Description) -> Digest:
    config = json.dumps(description.to_json(), sort_keys=True, separators=(",", ":")).encode()
    config_digest = _put_blob(layout, config)
    splits = []
    for layer in description.delta.omitted if description.delta else ():
        size = blob_path(layout, layer.split).stat().st_size
        splits.append({"mediaType": SPLIT_MEDIA_TYPE, "digest": layer.split, "size": size})
    for held in description.delta.ranges if description.delta else ():
        size = blob_path(layout, held.blob).stat().st_size
        splits.append({"mediaType": RANGES_MEDIA_TYPE, "digest": held.blob, "size": size})
    manifest = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST.value,
        "artifactType": BUNDLE_ARTIFACT_TYPE,
        "config": {
            "mediaType": DESCRIPTION_MEDIA_TYPE,
            "digest": str(config_digest),
            "size": len(config),
        },
        "layers": splits,
    }
    return _add_entry(layout, BUNDLE_REF, json.dumps(manifest, separators=(",", ":")).encode())


def _sign_bundle(layout: Path, key: Any, identity: str, digest: Digest) -> None:
    from atoll.pipeline.keys import sign_bytes
    from atoll.pipeline.sigstore import (
        OCI_CONFIG,
        PAYLOAD_MEDIA_TYPE,
        SIGNATURE_ANNOTATION,
        make_payload,
    )

    payload = make_payload(identity, digest)
    payload_digest = _put_blob(layout, payload)
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [str(payload_digest)]},
        },
        separators=(",", ":"),
    ).encode()
    config_digest = _put_blob(layout, config)
    signature = base64.b64encode(sign_bytes(key, payload)).decode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST.value,
        "config": {"mediaType": OCI_CONFIG, "digest": str(config_digest), "size": len(config)},
        "layers": [
            {
                "mediaType": PAYLOAD_MEDIA_TYPE,
                "digest": str(payload_digest),
                "size": len(payload),
                "annotations": {SIGNATURE_ANNOTATION: signature},
            }
        ],
    }
    _add_entry(layout, BUNDLE_SIG_REF, json.dumps(manifest, separators=(",", ":")).encode())
