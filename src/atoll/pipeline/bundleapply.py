"""``atoll bundle apply``: verify everything a bundle holds, then stage its OS image.

The file's format is drawn in :mod:`atoll.pipeline.bundle`.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll import strictjson
from atoll.errors import BundleError, BundleSignatureError, DigestMismatchError, LayerError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.imageinspect import read_config, select_manifest
from atoll.oci.manifest import (
    Descriptor,
    ImageManifest,
    MediaType,
    parse_config,
    parse_manifest,
    require_image_config,
)
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, ImageSource, Transport, open_source
from atoll.pipeline.bundle import (
    BOUND_IMAGES_LAYOUT,
    BUNDLE_SIG_REF,
    BundleImage,
    BundleInfo,
    BundleReader,
    Delta,
    OmittedLayer,
    digest_and_size,
)
from atoll.pipeline.policy import Policy
from atoll.pipeline.tarsplit import rebuild
from atoll.pipeline.trust import check_image, signature_keys
from atoll.store.importrecords import find_import

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient
    from atoll.pipeline.bundledelta import BundleRegistry
    from atoll.sysroot.lifecycle import Device, StageResult


@dataclass
class ApplyResult:
    bundle: BundleInfo
    stage: StageResult
    bound_images: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle.to_json(),
            **self.stage.to_json(),
            "boundImages": self.bound_images,
        }


def apply_bundle(
    path: Path,
    device: Device,
    *,
    policy: Policy | None,
    keys: Sequence[Any] = (),
    stage_options: dict[str, Any] | None = None,
    max_signature_age: datetime.timedelta | None = None,
    allow_downgrade: bool = True,
    now: datetime.datetime | None = None,
) -> ApplyResult:
    """Verify everything in the bundle, then stage its OS image on *device*.

    Checked before anything is written, in this order: the bundle's own
    signature (with *keys*, else the keys *policy* trusts for the OS image; not
    checked when neither names one), every manifest and blob digest, the policy
    for each image (with the bundle's signatures, none older than
    *max_signature_age*), unless *allow_downgrade* that the OS image is not older
    than the device's, and for a delta the rebuilt layers against their
    diff_ids.  Bound images then go to an OCI layout in the device's /var
    (:data:`BOUND_IMAGES_LAYOUT`), and the OS image is staged: the layers of a
    per-file delta are made by the registry upgrade's own puller
    (:mod:`atoll.pipeline.bundledelta`), every file checked against NEW's
    table of contents before the commit."""
    with BundleReader(path, device.ctx) as bundle:
        info = bundle.info()
        description = bundle.description
        os_image = description.os
        os_ref = ImageReference.parse(os_image.reference)
        trusted = list(keys) or signature_keys(policy, os_ref)
        info.signature = _check_bundle_signature(bundle, os_image.reference, trusted)
        omitted = {o.digest: o for o in (description.delta.omitted if description.delta else ())}
        held = {r.digest for r in (description.delta.ranges if description.delta else ())}
        for image in description.images:
            is_os = image.role == "os"
            _verify_image(bundle, image, omitted if is_os else {}, held if is_os else ())
        bundle.verify_rest()
        for image in description.images:
            ref = ImageReference.parse(image.reference)
            info.trust.append(
                check_image(
                    ref,
                    image.digest,
                    policy,
                    ctx=device.ctx,
                    signatures=bundle.signatures,
                    max_signature_age=max_signature_age,
                    now=now or datetime.datetime.now(datetime.UTC),
                )
            )
        rebuilt = _prepare_delta(bundle, device, description.delta) if description.delta else {}
        registry = None
        if description.delta and description.delta.per_file:
            from atoll.pipeline.bundledelta import BundleRegistry

            delta = description.delta
            registry = BundleRegistry(
                bundle,
                Digest.parse(os_image.digest),
                Digest.parse(delta.files) if delta.files else None,
                delta.ranges,
            )
        bound = [i for i in description.images if i.role == "bound"]
        bound_layout = None
        if bound:
            stateroot = device.state().current.stateroot
            bound_layout = device.sysroot.var(stateroot) / BOUND_IMAGES_LAYOUT
        if registry is not None:
            _check_base(bundle, device, description.delta)
        placed = []
        for image in bound:
            assert bound_layout is not None
            bound_layout.parent.mkdir(parents=True, exist_ok=True)
            copy_image(
                ImageName(Transport.OCI_ARCHIVE, path=path, ref_name=image.reference),
                ImageName(Transport.OCI, path=bound_layout, ref_name=image.reference),
                src_ctx=device.ctx,
                options=CopyOptions(preserve_digests=True),
            )
            placed.append(f"oci:{bound_layout}:{image.reference}")

        store = device.store() if rebuilt else None

        @contextlib.contextmanager
        def opener(name: ImageName, ctx: SystemContext) -> Iterator[tuple[ImageSource, Any]]:
            with _open_bundle_image(path, os_image, rebuilt, store, registry, name, ctx) as opened:
                yield opened

        device.opener = opener
        expected = os_image.digest

        def admit(name: ImageName, image: Any) -> None:
            if str(image.digest) != expected:
                raise BundleError(f"{path}: staged {image.digest}, not the verified {expected}")
            if not allow_downgrade:
                from atoll.pipeline.freshness import check_not_older

                state = device.state()
                current = [state.booted or state.current, state.staged]
                deployed = [d.origin.image_version for d in current if d is not None]
                check_not_older(str(name), image.version, deployed)

        device.admit = admit
        device.bound_images_layout = bound_layout
        target = ImageName(Transport.DOCKER, reference=os_ref)
        try:
            result = device.stage(target, **(stage_options or {}))
        except (LayerError, DigestMismatchError) as exc:
            if registry is None or not registry.holes:
                raise
            # A file the bundle has no frames for (its patch was refused, say).
            raise BundleError(
                f"{path}: {exc.message}",
                hint="the bundle lacks bytes this device's import needs: a delta that does "
                "not make the new image's files, or a device whose store differs from the "
                "--delta-from image's; apply a bundle made without --delta-from",
            ) from None
    return ApplyResult(info, result, placed)


def _check_base(bundle: BundleReader, device: Device, delta: Delta | None) -> None:
    """A per-file delta is what a device running OLD lacks: refuse it elsewhere."""
    assert delta is not None
    current = device.state().current.origin.manifest_digest
    if current != delta.from_digest:
        raise BundleError(
            f"{bundle.path}: a per-file delta from {delta.from_reference} "
            f"({delta.from_digest}), and this device runs {current}",
            hint="apply a full bundle (atoll bundle create without --delta-from), or one "
            "made --delta-from the image the device runs (see atoll status)",
        )


def _check_bundle_signature(bundle: BundleReader, identity: str, keys: Sequence[Any]) -> str:
    if not keys:
        return "not checked (no --key, and the trust policy asks for no signature)"
    from atoll.pipeline.keys import verify_bytes
    from atoll.pipeline.sigstore import parse_payload

    where = f"{bundle.path}"
    found = bundle.attached(BUNDLE_SIG_REF)
    if found is None:
        raise BundleSignatureError(
            f"{where}: the bundle is not signed, and a key is required to check it",
            hint="create it with atoll bundle create --key KEY",
        )
    for sig in found:
        raw = sig.signature_bytes()
        if raw is None or not any(verify_bytes(k, raw, sig.payload) for k in keys):
            continue
        claims = parse_payload(sig.payload)
        if claims.digest != str(bundle.manifest_digest) or claims.identity != identity:
            raise BundleSignatureError(
                f"{where}: the signature is for bundle {claims.digest} of {claims.identity}, "
                f"not this one ({bundle.manifest_digest} of {identity})"
            )
        return "verified"
    raise BundleSignatureError(
        f"{where}: no bundle signature verifies with the trusted key (another signer, or altered)",
        hint="check --key, or the keys of the trust policy",
    )


def _verify_image(
    bundle: BundleReader,
    image: BundleImage,
    omitted: dict[str, OmittedLayer],
    held: Collection[str] = (),
) -> None:
    entry = bundle.entries.get(image.reference)
    if entry is None or str(entry.digest) != image.digest:
        raise BundleError(
            f"{bundle.path}: {image.reference} is not in the bundle as {image.digest}"
        )
    raw = bundle.read(entry.digest)
    manifest = parse_manifest(raw, entry.media_type, where=f"{bundle.path}: {image.reference}")
    if not isinstance(manifest, ImageManifest):
        raise BundleError(f"{bundle.path}: {image.reference}: expected an image manifest")
    for desc in manifest.blobs():
        if bundle.has(desc.digest):
            bundle.verify_blob(desc)
        elif str(desc.digest) not in omitted and str(desc.digest) not in held:
            raise BundleError(
                f"{bundle.path}: {image.reference}: blob {desc.digest} is missing",
                hint="the file is incomplete; copy it again",
            )


def _prepare_delta(
    bundle: BundleReader, device: Device, delta: Delta
) -> dict[str, tuple[dict[str, Any], str]]:
    """For each omitted layer: its tar-split and the store commit that provides
    its files, after rebuilding it once and checking its diff_id."""
    store = device.store()
    base = find_import(store, Digest.parse(delta.from_digest))
    if base is None:
        raise BundleError(
            f"{bundle.path}: a delta from {delta.from_reference} ({delta.from_digest}), "
            "which this device's store does not hold",
            hint="apply a full bundle (atoll bundle create without --from), or one made "
            "--from the image the device runs (see atoll status)",
        )
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for layer in delta.omitted:
        try:
            split = strictjson.loads(gzip.decompress(bundle.read(Digest.parse(layer.split))))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: tar-split {layer.split}: {exc}") from None
        hexdigest, size = digest_and_size(rebuild(split, store, base.id, bundle.path))
        if f"sha256:{hexdigest}" != layer.diff_id or size != layer.size:
            raise BundleError(
                f"{bundle.path}: layer {layer.digest} rebuilt from the device's "
                f"{delta.from_reference} does not match its diff_id {layer.diff_id}"
            )
        out[layer.digest] = (split, base.id)
    return out


class _BundleSource(ImageSource):
    """The OS image of a bundle, with omitted layers rebuilt from the device's store."""

    def __init__(
        self,
        inner: ImageSource,
        rebuilt: dict[str, tuple[dict[str, Any], str]],
        store: Any,
        registry: BundleRegistry | None,
    ):
        self.inner = inner
        self.description = inner.description
        self.rebuilt = {Digest.parse(v[0]["diffId"]): v for v in rebuilt.values()}
        self.store = store
        self.registry = registry

    def range_client(self) -> tuple[RegistryClient, str] | None:
        from atoll.pipeline.bundledelta import REPOSITORY

        if self.registry is None:
            return None
        return self.registry.as_client(), REPOSITORY

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        return self.inner.get_manifest(digest)

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        found = self.rebuilt.get(desc.digest)
        if found is None:
            return self.inner.open_blob(desc)
        split, commit = found
        return contextlib.nullcontext(rebuild(split, self.store, commit, Path(self.description)))

    def close(self) -> None:
        self.inner.close()


@contextlib.contextmanager
def _open_bundle_image(
    path: Path,
    image: BundleImage,
    rebuilt: dict[str, tuple[dict[str, Any], str]],
    store: Any,
    registry: BundleRegistry | None,
    name: ImageName,
    ctx: SystemContext,
) -> Iterator[tuple[ImageSource, Any]]:
    """What :class:`~atoll.sysroot.lifecycle.Device` stages: the bundle's OS image,
    whose omitted layers are described as the uncompressed tars they rebuild to."""
    from atoll.sysroot.fetch import RemoteImage

    inner = open_source(ImageName(Transport.OCI_ARCHIVE, path=path, ref_name=image.reference), ctx)
    with _BundleSource(inner, rebuilt, store, registry) as source:
        _, manifest = select_manifest(source, ctx.platform)
        require_image_config(manifest, source.description)
        config_raw = read_config(source, manifest)
        config = parse_config(config_raw, where=source.description)
        layers = []
        for desc in manifest.layers:
            found = rebuilt.get(str(desc.digest))
            if found is None:
                layers.append(desc)
            else:
                split = found[0]
                diff_id = Digest.parse(split["diffId"])
                layers.append(Descriptor(MediaType.OCI_LAYER.value, diff_id, int(split["size"])))
        staged = ImageManifest(
            manifest.media_type, manifest.config, tuple(layers), manifest.annotations, manifest.raw
        )
        yield source, RemoteImage(name, staged, manifest.digest, config_raw, config)
