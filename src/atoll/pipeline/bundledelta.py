"""Per-file deltas in offline bundles (format 2, drawn in :mod:`atoll.pipeline.bundle`).

A device that runs OLD and upgrades to NEW from a registry moves, for each
layer it lacks, ranges of NEW's zstd:chunked layer (its TOC and tar-split, the
frames of the files its store lacks) and the patches of the delta from OLD
where they are smaller (:mod:`atoll.store.partial`, :mod:`atoll.oci.delta`).
A bundle made ``--delta-from OLD`` carries exactly those bytes.

``bundle create`` finds them by making that upgrade itself, on the machine
that writes the bundle: OLD is imported into a scratch store, the delta that
``atoll delta create`` would publish is computed
(:func:`atoll.pipeline.deltacreate.compute`) and stored by
:func:`atoll.oci.delta.push_delta` into the bundle's layout, and NEW is
imported by the same puller from a :class:`LayoutRegistry` that records every
range it is asked for.  A layer the puller read by ranges (or from the delta)
travels as those ranges; a layer it took whole travels whole.

``bundle apply`` imports NEW with the same puller and :class:`BundleRegistry`
in the registry's place: the delta is found through the referrers API (the
bundle lists the one its description names), its index read and checked, and
every file made from a patch or read from a range is checked against the
sha256 in NEW's table of contents, each layer's tar against its diff_id, before
the commit exists, exactly as in an upgrade from the registry.  Bytes of a
requested range that the bundle lacks (the gaps between files a coalesced
range spans) read as zeros: no file is made of them without its sha256
matching, and a range that starts or ends in bytes the bundle lacks is refused.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from atoll import strictjson
from atoll.errors import BundleError, DeltaError, InvalidReferenceError, NotFoundError
from atoll.oci.api import FetchedManifest
from atoll.oci.context import SystemContext
from atoll.oci.delta import ARTIFACT_TYPE, push_delta
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, MediaType
from atoll.oci.transports import ImageName, ImageSource, Transport
from atoll.pipeline.bundle import BlobRanges, BundleReader, blob_name
from atoll.pipeline.deltacreate import _read as read_image
from atoll.pipeline.deltacreate import compute
from atoll.pipeline.tarsplit import blob_path
from atoll.progress import NullProgress
from atoll.store import Store
from atoll.store.partial import import_image
from atoll.store.transferreport import DELTA, RANGES
from atoll.sysroot.fetch import import_remote, open_image

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient

#: The repository name the bundle's registry answers for.
REPOSITORY = "bundle"


class _LocalRegistry(ABC):
    """The calls :func:`~atoll.oci.delta.find_delta` and the puller make of a
    registry, answered from blobs held here."""

    def __init__(self, where: str, subject: Digest, delta: Digest | None) -> None:
        self.where = where
        #: NEW's manifest digest, and the delta artifact that refers to it.
        self.subject = subject
        self.delta = delta

    @abstractmethod
    def _blob(self, digest: Digest) -> bytes:
        """The blob's bytes, from where this registry keeps them."""

    def as_client(self) -> RegistryClient:
        # Duck-typed: only the methods below are called.
        return cast("RegistryClient", self)

    def name(self, repository: str | None) -> str:
        return self.where

    def referrers(self, repository: str, subject: Digest, artifact_type: str) -> bytes:
        rows = []
        if self.delta is not None and subject == self.subject and artifact_type == ARTIFACT_TYPE:
            raw = self._blob(self.delta)
            doc = strictjson.loads(raw)
            annotations = doc.get("annotations") if isinstance(doc, dict) else None
            rows.append(
                {
                    "mediaType": MediaType.OCI_MANIFEST.value,
                    "digest": str(self.delta),
                    "size": len(raw),
                    "artifactType": ARTIFACT_TYPE,
                    "annotations": annotations if isinstance(annotations, dict) else {},
                }
            )
        index = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value, "manifests": rows}
        return json.dumps(index).encode()

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        try:
            digest = Digest.parse(reference)
        except (ValueError, InvalidReferenceError):
            raise NotFoundError(f"{self.where}: no manifest tagged {reference}") from None
        raw = self._blob(digest)
        return FetchedManifest(raw, MediaType.OCI_MANIFEST.value, digest)

    def fetch_blob(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        return self._blob(digest)


class LayoutRegistry(_LocalRegistry):
    """An OCI layout directory as the registry ``bundle create`` pushes the
    delta to and imports NEW from; every range read is recorded."""

    def __init__(self, layout: Path, subject: Digest) -> None:
        super().__init__(f"oci:{layout}", subject, None)
        self.layout = layout
        #: blob -> the (start, end) of every range read from it.
        self.read: dict[Digest, list[tuple[int, int]]] = {}

    def _blob(self, digest: Digest) -> bytes:
        try:
            return blob_path(self.layout, digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.where}: no blob {digest}") from None

    def blob_exists(self, repository: str, digest: Digest) -> bool:
        return blob_path(self.layout, digest).exists()

    def upload_blob(
        self, repository: str, digest: Digest, chunks: Iterable[bytes], **_: Any
    ) -> None:
        data = b"".join(chunks)
        if Digest.of(data, digest.algorithm) != digest:
            raise BundleError(f"{self.where}: blob {digest} does not match its digest")
        blob_path(self.layout, digest).write_bytes(data)

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> Digest:
        digest = Digest.of(raw)
        if reference == str(digest):
            blob_path(self.layout, digest).write_bytes(raw)
            self.delta = digest
        return digest

    def fetch_range(self, repository: str, digest: Digest, start: int, length: int) -> bytes:
        self.read.setdefault(digest, []).append((start, start + length))
        with blob_path(self.layout, digest).open("rb") as fh:
            fh.seek(start)
            return fh.read(length)


def merge(spans: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``(start, end)`` spans as sorted ``(start, length)`` extents, touching ones joined."""
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        elif end > start:
            out.append([start, end])
    return tuple((s, e - s) for s, e in out)


class RangedSource(ImageSource):
    """*inner*, with *registry* answering ``Range`` requests for its blobs."""

    def __init__(self, inner: ImageSource, registry: _LocalRegistry) -> None:
        self.inner = inner
        self.description = inner.description
        self.registry = registry

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        return self.inner.get_manifest(digest)

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        return self.inner.open_blob(desc)

    def range_client(self) -> tuple[RegistryClient, str]:
        return self.registry.as_client(), REPOSITORY

    def close(self) -> None:
        self.inner.close()


def plan_file_deltas(
    layout: Path,
    new_ref_name: str,
    old_layout: Path,
    old_ref_name: str,
    scratch: Path,
    ctx: SystemContext,
) -> tuple[Digest | None, dict[Digest, tuple[tuple[int, int], ...]]]:
    """Put the per-file delta OLD -> NEW into *layout* and make the upgrade a
    device running OLD makes (in a store under *scratch*).

    Returns the delta's manifest (None: no file is smaller by it) and the
    extents read of each blob that need not travel whole (the layers of NEW
    read by ranges, the delta's payload).  NEW without a zstd:chunked layer:
    nothing."""
    old_name = ImageName(Transport.OCI, path=old_layout, ref_name=old_ref_name)
    new_name = ImageName(Transport.OCI, path=layout, ref_name=new_ref_name)
    try:
        new = read_image(new_name, ctx, toc=True)
    except DeltaError:
        return None, {}  # no table of contents: layers travel whole
    old = read_image(old_name, ctx, toc=False)
    index, payload, _, _ = compute(old, new)
    registry = LayoutRegistry(layout, new.digest)
    payload_digest = Digest.of(payload) if index.files else None
    if index.files:
        subject = Descriptor(new.manifest.media_type, new.digest, len(new.manifest.raw))
        push_delta(registry.as_client(), REPOSITORY, index, payload, subject)
    del old, new, payload
    store = Store.create(scratch)
    import_remote(store, old_name, ctx, partial=False)
    with open_image(new_name, ctx) as (source, image):
        _, report = import_image(
            store,
            RangedSource(source, registry),
            image.manifest,
            image.config_raw,
            image=str(new_name),
            manifest_digest=image.digest,
            progress=NullProgress(),
            delta_from=index.old,
        )
    ranged = {row.digest for row in report.layers if row.path in (RANGES, DELTA)}
    # A layer that was taken whole after its TOC was read travels whole.
    extents = {
        digest: merge(spans)
        for digest, spans in registry.read.items()
        if str(digest) in ranged or digest == payload_digest
    }
    return registry.delta, extents


def write_ranges(layout: Path, digest: Digest, extents: tuple[tuple[int, int], ...]) -> BlobRanges:
    """The blob holding *extents* of *digest* end to end, written into *layout*."""
    data = bytearray()
    with blob_path(layout, digest).open("rb") as fh:
        for start, length in extents:
            fh.seek(start)
            data += fh.read(length)
    held = Digest.of(bytes(data))
    blob_path(layout, held).write_bytes(data)
    return BlobRanges(str(digest), str(held), extents)


class BundleRegistry(_LocalRegistry):
    """A bundle as the registry ``bundle apply`` imports NEW from: its blobs
    read verified, its ranges served from what the bundle holds."""

    def __init__(
        self,
        bundle: BundleReader,
        subject: Digest,
        delta: Digest | None,
        ranges: Iterable[BlobRanges],
    ) -> None:
        super().__init__(str(bundle.path), subject, delta)
        self.bundle = bundle
        self.ranges = {Digest.parse(r.digest): r for r in ranges}
        #: Ranges served with bytes the bundle lacks read as zeros.
        self.holes = 0

    def _blob(self, digest: Digest) -> bytes:
        return self.bundle.read(digest)

    def fetch_range(self, repository: str, digest: Digest, start: int, length: int) -> bytes:
        held = self.ranges.get(digest)
        if held is None:
            if not self.bundle.has(digest):
                raise BundleError(
                    f"{self.where}: the import reads blob {digest}, which the bundle does not hold",
                    hint="this device needs other parts of the image than the bundle "
                    "was made for; apply a bundle made without --delta-from",
                )
            return self.bundle.tar.read_range(blob_name(digest), start, length, f"blob {digest}")
        end = start + length
        out = bytearray(length)
        covered = [False, False]
        got = 0
        at = 0  # where the extent starts in the ranges blob
        for e_start, e_length in held.extents:
            e_end = e_start + e_length
            lo, hi = max(start, e_start), min(end, e_end)
            if lo < hi:
                out[lo - start : hi - start] = self.bundle.tar.read_range(
                    blob_name(Digest.parse(held.blob)), at + lo - e_start, hi - lo, "ranges"
                )
                got += hi - lo
            covered[0] |= e_start <= start < e_end
            covered[1] |= e_start < end <= e_end
            at += e_length
        if length and not all(covered):
            raise BundleError(
                f"{self.where}: the import reads bytes {start}-{end} of blob {digest}, "
                "which the bundle does not hold",
                hint="the bundle was made for a device running its --delta-from image "
                "with nothing else in its store; apply a bundle made without --delta-from",
            )
        self.holes += got < length
        return bytes(out)
