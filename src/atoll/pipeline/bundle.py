"""Offline bundles: an OS image, the workload images it binds and their signatures, in one file.

A bundle is an ``oci-archive`` (a tar holding one OCI image layout, see
:mod:`atoll.oci.transports.archive`), so ``skopeo copy oci-archive:FILE:REF``
reads its images.  Format version :data:`BUNDLE_VERSION` (2: a delta made
``--delta-from`` carries per-file deltas and ranges, see below; a bundle
without them is written as version 1, which older atoll reads)::

    FILE (tar)
    ├── oci-layout
    ├── index.json        one entry per manifest, named by org.opencontainers.image.ref.name:
    │   ├── HOST/REPO:TAG                    the OS image (its platform's manifest)
    │   ├── HOST/REPO:sha256-HEX.sig         its sigstore signatures, as in the registry
    │   ├── HOST2/APP:TAG                    each bound image (--with-bound-images) …
    │   ├── HOST2/APP:sha256-HEX.sig         … and its signatures, when it has some
    │   ├── HOST/REPO:sha256-HEX.delta       the per-file delta (format 2, below)
    │   ├── atoll-bundle                     the bundle manifest (below)
    │   └── atoll-bundle.sig                 the bundle's signature (when made with a key)
    └── blobs/sha256/HEX                     every blob, except the layers a delta omits
                                             or carries only ranges of

    atoll-bundle: an OCI image manifest, artifactType application/vnd.atoll.bundle.v1
    ├── config   application/vnd.atoll.bundle.v1+json, the description:
    │            {"atollBundle": 1, "created": "…Z",
    │             "images": [{"role": "os" | "bound", "reference": "HOST/REPO:TAG",
    │                         "digest": "sha256:…", "signatures": "sha256:…" | null,
    │                         "unit": "usr/share/containers/systemd/app.image" | null}],
    │             "delta": null | {"from": "HOST/REPO:OLD", "fromDigest": "sha256:…",
    │                              "omitted": [{"digest": LAYER, "diffId": "sha256:…",
    │                                           "size": TAR BYTES, "split": "sha256:…"}],
    │                              "files": null | "sha256:…",            (format 2)
    │                              "ranges": [{"digest": BLOB, "blob": "sha256:…",
    │                                          "extents": [[START, LENGTH], …]}]}}
    └── layers   the tar-split blobs of the omitted layers
                 (application/vnd.atoll.tar-split.v1+json+gzip), then the
                 ranges blobs (application/vnd.atoll.blob-ranges.v1)

    atoll-bundle.sig: like a sigstore attachment (see atoll.pipeline.sigstore): one
    layer, a simple-signing payload naming the OS image's reference and, as
    docker-manifest-digest, the digest of the atoll-bundle manifest; the ECDSA
    signature in the layer's dev.cosignproject.cosign/signature annotation.

The bundle manifest names every image by digest and every manifest names its
blobs by digest, so the one signature covers the whole bundle.

**Deltas** (``--from OLD``): layers of the new image that OLD also has are left
out.  A device has no layer blobs, only the files of the image it runs (in its
object store), so the bundle carries, for each omitted layer, a *tar-split*: the
layer's uncompressed tar with every regular file's content replaced by a
reference (path, size, sha256)::

    {"version": 1, "diffId": "sha256:…", "size": N,
     "segments": [["raw", BASE64 header bytes], ["file", PATH, SIZE, SHA256HEX], …]}

``bundle apply`` finds the commit of OLD in the device's store (by manifest
digest: the booted image, or any image still in the store), rebuilds each omitted
layer byte for byte from those files and checks it against the layer's diff_id.
``bundle create`` only leaves a layer out when every file it holds is, at the
same path, unchanged in OLD's final file tree; other layers travel whole.

**Per-file deltas** (format 2, ``--delta-from OLD`` of a zstd:chunked NEW):
``files`` is the manifest of the delta artifact ``atoll delta create`` would
publish (:mod:`atoll.oci.delta`), and each ``ranges`` entry stands for a blob
(a layer of NEW, the delta's payload) of which the bundle holds only the
listed extents, end to end in ``blob``: what a device running OLD reads of it
by ``Range`` requests in an upgrade from the registry.  How they are chosen
and applied is in :mod:`atoll.pipeline.bundledelta`.

This module holds the format and reads bundles (``bundle inspect``);
:mod:`atoll.pipeline.bundlecreate` writes them and
:mod:`atoll.pipeline.bundleapply` verifies and stages them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll import strictjson
from atoll.errors import BundleError, InvalidReferenceError, LayerError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor
from atoll.oci.reference import ImageReference
from atoll.pipeline.trust import TrustDecision

if TYPE_CHECKING:
    from atoll.oci.transports.archive import TarLayout
    from atoll.pipeline.sigstore import Signature

BUNDLE_VERSION = 2
#: The version of a bundle without per-file deltas (older atoll reads it).
BUNDLE_VERSION_LAYERS = 1
BUNDLE_REF = "atoll-bundle"
BUNDLE_SIG_REF = "atoll-bundle.sig"
BUNDLE_ARTIFACT_TYPE = "application/vnd.atoll.bundle.v1"
DESCRIPTION_MEDIA_TYPE = "application/vnd.atoll.bundle.v1+json"
SPLIT_MEDIA_TYPE = "application/vnd.atoll.tar-split.v1+json+gzip"
RANGES_MEDIA_TYPE = "application/vnd.atoll.blob-ranges.v1"
#: The index name of the per-file delta's manifest (after the OS image's repository).
DELTA_SUFFIX = ".delta"
#: Where ``bundle apply`` leaves bound images: an OCI layout in the device's /var.
BOUND_IMAGES_LAYOUT = Path("lib/atoll/bundle-images")
_MAX_JSON = 64 << 20


# --- the description ------------------------------------------------------------------


@dataclass(frozen=True)
class BundleImage:
    role: str
    reference: str
    digest: str
    signatures: str | None = None
    unit: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OmittedLayer:
    digest: str
    diff_id: str
    size: int
    split: str

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "diffId": self.diff_id,
            "size": self.size,
            "split": self.split,
        }


@dataclass(frozen=True)
class BlobRanges:
    """Extents of the blob *digest* (``[start, length]``, sorted, apart), held
    end to end in the bundle's blob *blob*."""

    digest: str
    blob: str
    extents: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "blob": self.blob,
            "extents": [list(e) for e in self.extents],
        }

    @classmethod
    def from_json(cls, raw: Any) -> BlobRanges:
        extents = []
        for e in raw["extents"]:
            if not isinstance(e, list) or len(e) != 2 or not all(type(n) is int for n in e):
                raise ValueError(f"an extent is not [START, LENGTH]: {e!r}")
            extents.append((e[0], e[1]))
        end = -1
        for start, length in extents:
            if start <= end or length <= 0:
                raise ValueError(f"extents of {raw['digest']} overlap or are out of order")
            end = start + length
        digest, blob = Digest.parse(str(raw["digest"])), Digest.parse(str(raw["blob"]))
        return cls(str(digest), str(blob), tuple(extents))


@dataclass(frozen=True)
class Delta:
    from_reference: str
    from_digest: str
    omitted: tuple[OmittedLayer, ...]
    #: The per-file delta's manifest (format 2), and the blobs held as ranges.
    files: str | None = None
    ranges: tuple[BlobRanges, ...] = ()

    @property
    def per_file(self) -> bool:
        return self.files is not None or bool(self.ranges)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": self.from_reference,
            "fromDigest": self.from_digest,
            "omitted": [o.to_json() for o in self.omitted],
        }
        if self.per_file:
            out |= {"files": self.files, "ranges": [r.to_json() for r in self.ranges]}
        return out


@dataclass(frozen=True)
class Description:
    created: str
    images: tuple[BundleImage, ...]
    delta: Delta | None = None
    version: int = BUNDLE_VERSION

    @property
    def os(self) -> BundleImage:
        return next(i for i in self.images if i.role == "os")

    def to_json(self) -> dict[str, Any]:
        return {
            "atollBundle": self.version,
            "created": self.created,
            "images": [i.to_json() for i in self.images],
            "delta": self.delta.to_json() if self.delta else None,
        }

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Description:
        try:
            doc = strictjson.loads(raw)
            version = doc["atollBundle"]
            if not isinstance(version, int) or version > BUNDLE_VERSION:
                raise BundleError(
                    f"{where}: bundle format {version!r} is newer than this atoll reads "
                    f"({BUNDLE_VERSION})",
                    hint="apply it with a newer atoll",
                )
            images = tuple(
                BundleImage(
                    str(i["role"]),
                    str(i["reference"]),
                    str(i["digest"]),
                    i.get("signatures"),
                    i.get("unit"),
                )
                for i in doc["images"]
            )
            delta = None
            if doc.get("delta"):
                d = doc["delta"]
                omitted = tuple(
                    OmittedLayer(
                        str(o["digest"]), str(o["diffId"]), int(o["size"]), str(o["split"])
                    )
                    for o in d["omitted"]
                )
                files = d.get("files")
                ranges = tuple(BlobRanges.from_json(r) for r in d.get("ranges") or ())
                delta = Delta(
                    str(d["from"]),
                    str(d["fromDigest"]),
                    omitted,
                    str(Digest.parse(str(files))) if files is not None else None,
                    ranges,
                )
            description = cls(str(doc["created"]), images, delta, version)
            if sum(1 for i in images if i.role == "os") != 1:
                raise BundleError(f"{where}: the bundle must hold exactly one OS image")
            return description
        except (ValueError, KeyError, TypeError, InvalidReferenceError) as exc:
            raise BundleError(f"{where}: malformed bundle description ({exc!r})") from None


@dataclass
class BundleInfo:
    path: str
    manifest_digest: str
    description: Description
    signed: bool
    blobs: int
    size: int
    #: ``verified with …``, ``not checked (…)`` — filled in by apply.
    signature: str = ""
    trust: list[TrustDecision] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bundleDigest": self.manifest_digest,
            **self.description.to_json(),
            "signed": self.signed,
            "blobs": self.blobs,
            "size": self.size,
            "signature": self.signature or None,
            "trust": [t.to_json() for t in self.trust],
        }


# --- reading a bundle -------------------------------------------------------------------


class BundleReader:
    """An open bundle file: its index, verified reads of its blobs."""

    def __init__(self, path: Path, ctx: SystemContext | None = None) -> None:
        from atoll.oci.transports.archive import TarLayout

        self.path = path
        try:
            self.tar: TarLayout = TarLayout(path, ctx.tmpdir if ctx else None)
        except LayerError as exc:
            raise BundleError(f"not a readable bundle: {exc.message}", hint=exc.hint) from None
        self._names: frozenset[str] | None = None
        #: The blobs whose bytes were checked against their digests.
        self.verified: set[Digest] = set()
        try:
            index = strictjson.loads(self.tar.read("index.json", _MAX_JSON, "OCI layout index"))
            self.entries: dict[str, Descriptor] = {}
            for i, raw in enumerate(index["manifests"]):
                desc = Descriptor.from_json(raw, f"{path}: index.json manifests[{i}]")
                name = desc.annotations.get("org.opencontainers.image.ref.name")
                if name:
                    self.entries[name] = desc
            top = self.entries.get(BUNDLE_REF)
            if top is None:
                raise BundleError(
                    f"{path}: not an atoll bundle (no {BUNDLE_REF} entry in index.json)",
                    hint="make bundles with atoll bundle create",
                )
            self.manifest_digest = top.digest
            self.manifest = strictjson.loads(self.read(top.digest))
            config = self.manifest["config"]
            self.description = Description.from_json(
                self.read(Digest.parse(config["digest"])), str(path)
            )
        except (ValueError, KeyError, TypeError) as exc:
            self.tar.close()
            raise BundleError(f"{path}: malformed bundle ({exc!r})") from None
        except BaseException:
            self.tar.close()
            raise

    def close(self) -> None:
        self.tar.close()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, digest: Digest) -> bool:
        if self._names is None:
            self._names = frozenset(self.tar.names())
        return blob_name(digest) in self._names

    def read(self, digest: Digest, limit: int = _MAX_JSON) -> bytes:
        data = self.tar.read(blob_name(digest), limit, f"blob {digest}")
        if Digest.of(data, digest.algorithm) != digest:
            raise BundleError(f"{self.path}: blob {digest} does not match its digest")
        self.verified.add(digest)
        return data

    def verify_blob(self, desc: Descriptor) -> None:
        with self.tar.open(blob_name(desc.digest), "blob") as chunks:
            hexdigest, size = digest_and_size(chunks, desc.digest.algorithm)
        if hexdigest != desc.digest.hex or size != desc.size:
            raise BundleError(f"{self.path}: blob {desc.digest} does not match its digest or size")
        self.verified.add(desc.digest)

    def verify_rest(self) -> None:
        """Check every blob no earlier check read (signatures the policy does not
        ask for, blobs nothing names) against the digest it is stored under, and
        refuse any other member: nothing in a bundle goes unchecked."""
        for name in self.tar.names():
            if name in ("oci-layout", "index.json"):
                continue
            algorithm, _, hexdigest = name.removeprefix("blobs/").partition("/")
            try:
                if not name.startswith("blobs/"):
                    raise ValueError(name)
                digest = Digest.parse(f"{algorithm}:{hexdigest}")
            except (ValueError, InvalidReferenceError):
                raise BundleError(
                    f"{self.path}: {name!r} is not part of an OCI layout (not a blob)",
                    hint="make bundles with atoll bundle create",
                ) from None
            if digest in self.verified:
                continue
            with self.tar.open(name, "blob") as chunks:
                actual, _ = digest_and_size(chunks, digest.algorithm)
            if actual != digest.hex:
                raise BundleError(f"{self.path}: blob {digest} does not match its digest")
            self.verified.add(digest)

    def attached(self, ref_name: str) -> list[Signature] | None:
        """The signatures of the sigstore-style manifest the index names *ref_name*;
        None when there is no such entry."""
        from atoll.pipeline.sigstore import Signature

        entry = self.entries.get(ref_name)
        if entry is None:
            return None
        where = f"{self.path}: signature manifest {entry.digest}"
        try:
            manifest = strictjson.loads(self.read(entry.digest))
        except strictjson.StrictJSONError as exc:
            raise BundleError(f"{where}: {exc}") from None
        layers = manifest.get("layers") if isinstance(manifest, dict) else None
        if not isinstance(layers, list | None):
            raise BundleError(f"{where}: not an image manifest (no list of layers)")
        out = []
        for layer in layers or []:
            annotations = layer.get("annotations") if isinstance(layer, dict) else None
            if not (
                isinstance(layer, dict)
                and isinstance(layer.get("digest"), str)
                and isinstance(annotations, dict | None)
            ):
                raise BundleError(f"{where}: a layer is not a descriptor with a digest")
            payload = self.read(Digest.parse(layer["digest"]))
            annotations = {str(k): str(v) for k, v in (annotations or {}).items()}
            out.append(Signature(str(layer.get("mediaType")), payload, annotations))
        return out

    def signatures(self, ref: ImageReference, digest: Digest) -> list[Signature]:
        """The sigstore signatures the bundle holds for *digest* of *ref*'s repository."""
        return self.attached(f"{ref.name}:{digest.algorithm}-{digest.hex}.sig") or []

    def info(self) -> BundleInfo:
        names = [n for n in self.tar.names() if n.startswith("blobs/")]
        return BundleInfo(
            str(self.path),
            str(self.manifest_digest),
            self.description,
            BUNDLE_SIG_REF in self.entries,
            len(names),
            self.path.stat().st_size,
        )


def blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def digest_and_size(chunks: Iterable[bytes], algorithm: str = "sha256") -> tuple[str, int]:
    """The hex digest of the bytes *chunks* yield, and how many there are."""
    hasher = hashlib.new(algorithm)
    size = 0
    for chunk in chunks:
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def inspect_bundle(path: Path, ctx: SystemContext | None = None) -> BundleInfo:
    """What *path* holds (nothing is verified but the description's own digest)."""
    with BundleReader(path, ctx) as bundle:
        return bundle.info()
