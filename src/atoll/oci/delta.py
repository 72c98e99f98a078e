"""Binary deltas between two OS images, published as OCI artifacts.

A delta from OLD to NEW holds, for each regular file NEW has and OLD lacks
(by the sha256 of its contents), the smallest of: a zstd patch against the
file at the same path in OLD (zstd's ``--patch-from``: OLD's file is the
raw-content dictionary, long-distance matching on), a bsdiff patch against
the same file (``BSDIFF40``, made with bsdiff4 where the delta is created,
applied on the device by :mod:`atoll.oci.bspatch`, standard library only),
or the new file alone at zstd's highest level; and only when that is smaller
than the file's frames in NEW's zstd:chunked layer (else the device fetches
the frames by range: the delta never moves more).

The artifact, in the same repository as NEW::

    manifest  application/vnd.oci.image.manifest.v1+json
      artifactType  application/vnd.atoll.delta.v1
      config        application/vnd.oci.empty.v1+json ("{}")
      layers[0]     application/vnd.atoll.delta.index.v1+json+zstd   the index
      layers[1]     application/vnd.atoll.delta.payload.v1      the patches, end to end
      subject       NEW's image manifest
      annotations   org.atoll.delta.from = OLD's manifest digest
                    org.atoll.delta.to   = NEW's manifest digest

    index (zstd)  {"version": 3, "from": "sha256:…", "to": "sha256:…",
            "files": [{"path": "usr/bin/x",                 (the file's path in NEW)
                       "method": "zstd-patch"|"bsdiff"|"zstd",
                       "base": "usr/lib/y",               (patches only, when not "path")
                       "length": L}, …],                  (bytes of the payload)
            "tocs": [{"toc": "sha256:…", "base": "sha256:…", "size": N,
                      "offset": O, "length": L,
                      "dictionary": "toc+files"}, …]}      (left out: "toc")

Version 3 names each file by its path in NEW and its base by its path in OLD
(``base`` left out when it is the same path), not by two sha256 each: the
device reads the base at that path in the commit it runs, and the file's
size and sha256 are the ones NEW's table of contents gives for the path, which
the result is checked against.  The files' patches lie end to end at the start
of the payload in the order of the list (sorted by path), so each one's offset
is the sum of the lengths before it.  A file whose base path is not in the running
commit is not made from the delta; it is looked up by its content digest and
fetched by range as without one.  ``tocs`` carries the tables of contents of
NEW's changed layers: each a zstd ``--patch-from`` patch of the TOC's JSON
(``size`` bytes) against the JSON of the TOC ``base`` names, which OLD has
and the device kept when it imported OLD (:mod:`atoll.store.tocs`); the
device compresses the result as the layer writer does
(:data:`~atoll.oci.chunked.METADATA_LEVEL`) and uses it only when that
matches the ``manifest-checksum`` annotation, else it fetches the TOC.
A ``toc+files`` patch is made against that JSON followed by
:func:`digests_text` of every file of the delta, in the index's order: the new
files' sha256s, which no old TOC holds, need not travel.  The device makes
every file first (each patch states its size), keeps each by the sha256 of
what it made, and builds the same dictionary; a reader that does not know the
key applies the patch to OLD's TOC alone, which fails or makes a TOC the
annotation refuses, so it fetches the TOC and the version stays 3.

Versions 1 and 2, still read: each entry names the file by ``sha256`` (hex of
its contents) and its base by ``base`` (hex of the base's contents), which
the device finds in its store by content; version 1 has no ``bsdiff``, and an
index of the old form that uses no bsdiff patch is written as version 1.
A device that reads only versions 1 and 2 refuses a version 3 index and
fetches its ranges instead.

It is found by NEW's digest: the OCI referrers API where the registry answers
it, else the referrers tag scheme (an OCI index tagged ``sha256-<NEW hex>``
listing the referrers, which Distribution 2.8 stores as any other index).

Nothing in a delta is trusted: the index blob is verified by its digest, the
payload is read by ranges, and every file made from it is checked against the
sha256 NEW's table of contents names before it is used.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atoll import strictjson
from atoll.errors import AtollError, DeltaError, NotFoundError
from atoll.lazy import lazy_module
from atoll.oci.bspatch import HEADER, MAGIC, PatchError, apply_bsdiff
from atoll.oci.chunked import MAX_METADATA, METADATA_LEVEL
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, ImageManifest, MediaType, parse_manifest

if TYPE_CHECKING:
    import zstandard
else:
    zstandard = lazy_module("zstandard")

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient

ARTIFACT_TYPE = "application/vnd.atoll.delta.v1"
INDEX_TYPE = "application/vnd.atoll.delta.index.v1+json+zstd"
PAYLOAD_TYPE = "application/vnd.atoll.delta.payload.v1"
FROM_ANNOTATION = "org.atoll.delta.from"
TO_ANNOTATION = "org.atoll.delta.to"
INDEX_VERSION = 3
#: The versions read; version 1 has no bsdiff entries, 1 and 2 key files by sha256.
INDEX_VERSIONS = (1, 2, 3)
#: The first version that keys files by path and carries TOC patches.
BY_PATH = 3
PATCH = "zstd-patch"
BSDIFF = "bsdiff"
WHOLE = "zstd"
METHODS = (PATCH, BSDIFF, WHOLE)
#: Methods that rebuild a file from a base in OLD.
PATCHES = (PATCH, BSDIFF)
#: A TOC patch's dictionary: OLD's TOC alone, or followed by the delta's files' digests.
TOC_ONLY = "toc"
TOC_FILES = "toc+files"
DICTIONARIES = (TOC_ONLY, TOC_FILES)
EMPTY_CONFIG = b"{}"
#: Largest index read (a million files' entries fit well below this).
MAX_INDEX = 64 << 20
_LEVEL = 19


def referrers_tag(digest: Digest) -> str:
    """The tag of the referrers tag scheme for *digest*."""
    return f"{digest.algorithm}-{digest.hex}"


# --- patches --------------------------------------------------------------------------------


def _window_log(size: int) -> int:
    # Long-distance matching must see the whole dictionary plus the file.
    return max(zstandard.WINDOWLOG_MIN, min(zstandard.WINDOWLOG_MAX, size.bit_length() + 1))


def make_patch(old: bytes, new: bytes) -> bytes:
    """zstd's ``--patch-from``: *new* compressed with *old* as a raw dictionary."""
    params = zstandard.ZstdCompressionParameters.from_level(
        _LEVEL,
        window_log=_window_log(len(old) + len(new)),
        enable_ldm=True,
        write_content_size=True,
    )
    zdict = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params).compress(new)


def make_bsdiff(old: bytes, new: bytes) -> bytes:
    """A ``BSDIFF40`` patch (bsdiff4: a build-host dependency, never a device's)."""
    import bsdiff4  # type: ignore[import-untyped]

    return bytes(bsdiff4.diff(old, new))


def make_whole(new: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=_LEVEL).compress(new)


def apply_patch(method: str, data: bytes, base: bytes | None, size: int, where: str) -> bytes:
    """The file an entry makes, exactly *size* bytes (not yet verified by digest)."""
    if method == BSDIFF:
        assert base is not None
        try:
            return apply_bsdiff(base, data, size)
        except PatchError as exc:
            raise DeltaError(f"{where}: a bsdiff patch does not apply: {exc}") from None
    try:
        if method == PATCH:
            assert base is not None
            zdict = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            window = _window_log(len(base) + size)
            dctx = zstandard.ZstdDecompressor(dict_data=zdict, max_window_size=1 << window)
        else:
            dctx = zstandard.ZstdDecompressor()
        out = dctx.decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"{where}: a patch does not decompress: {exc}") from None
    if len(out) != size:
        raise DeltaError(f"{where}: a patch makes {len(out)} bytes, not {size}")
    return out


def _unzstd(data: bytes, limit: int, what: str, where: str) -> bytes:
    """*data* decompressed, refused past *limit* bytes."""
    try:
        # Read, not decompressed at once: a frame header's size is not trusted.
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            text = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"{where}: {what} does not decompress: {exc}") from None
    if len(text) > limit:
        raise DeltaError(f"{where}: {what} expands past {limit} bytes")
    return text


def toc_json(compressed: bytes, where: str) -> bytes:
    """A TOC's JSON from its compressed bytes."""
    return _unzstd(compressed, MAX_METADATA, "a table of contents", where)


def compress_toc(text: bytes) -> bytes:
    """A TOC's JSON compressed as :func:`atoll.oci.chunked.compress_tar_zstd_chunked`
    writes it (the bytes the manifest annotation names, when the writer was atoll)."""
    return zstandard.ZstdCompressor(level=METADATA_LEVEL).compress(text)


def patch_size(method: str, data: bytes, limit: int, where: str) -> int:
    """The size of the file an entry makes, as its patch states it (zstd's
    frame header, bsdiff's header), refused past *limit*: the device that makes
    the files before it has NEW's TOC has no other to go by."""
    size = -1
    if method == BSDIFF and len(data) >= HEADER and data.startswith(MAGIC):
        size = int.from_bytes(data[24:32], "little")
    elif method != BSDIFF:
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            size = -1
    if size < 0 or size > limit:
        raise DeltaError(f"{where}: a patch states no size up to {limit} bytes")
    return size


def digests_text(shas: Iterable[str]) -> bytes:
    """The sha256s (hex) of the delta's files as NEW's TOC writes them, in the
    index's order: the end of a ``toc+files`` TOC patch's dictionary."""
    return b"".join(b'"digest":"sha256:%s",' % sha.encode() for sha in shas)


def toc_dictionary(base_text: bytes, entry: TocPatch, digests: bytes) -> bytes:
    """What a TOC patch is made against: OLD's TOC JSON, then (``toc+files``)
    the digests of the delta's files."""
    return base_text + digests if entry.files else base_text


def rebuild_toc(
    patch: bytes, base: bytes, entry: TocPatch, where: str, digests: bytes = b""
) -> bytes:
    """NEW's compressed TOC, made from *patch* and OLD's compressed TOC *base*
    (and, for a ``toc+files`` patch, :func:`digests_text` of the files the
    delta made; not yet checked against the annotation: the caller does)."""
    zdict = toc_dictionary(toc_json(base, where), entry, digests)
    return compress_toc(apply_patch(PATCH, patch, zdict, entry.size, where))


# --- the index ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaFile:
    """One file the payload makes.  Version 3 fills *path* and *base_path*
    (*sha256* and *base* stay empty: NEW's TOC gives the digest); versions 1
    and 2 fill *sha256* and *base* (hex digests of the contents)."""

    sha256: str
    size: int
    method: str
    offset: int
    length: int
    base: str = ""
    base_size: int = 0
    path: str = ""
    base_path: str = ""

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_json(self) -> dict[str, Any]:
        if self.path:
            out: dict[str, Any] = {"path": self.path, "method": self.method}
            if self.method in PATCHES and self.base_path != self.path:
                out["base"] = self.base_path
            return out | {"length": self.length}
        out = {"sha256": self.sha256, "size": self.size, "method": self.method}
        if self.method in PATCHES:
            out |= {"base": self.base, "baseSize": self.base_size}
        return out | {"offset": self.offset, "length": self.length}


@dataclass(frozen=True)
class TocPatch:
    """NEW's TOC *toc* (compressed bytes' digest) as a patch of its JSON
    (*size* bytes) against the JSON of OLD's TOC *base*, followed when *files*
    (``"dictionary": "toc+files"``) by the digests of every file of the delta."""

    toc: str
    base: str
    size: int
    offset: int
    length: int
    files: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_json(self) -> dict[str, Any]:
        return {
            "toc": self.toc,
            "base": self.base,
            "size": self.size,
            "offset": self.offset,
            "length": self.length,
        } | ({"dictionary": TOC_FILES} if self.files else {})


@dataclass(frozen=True)
class DeltaIndex:
    old: Digest
    new: Digest
    #: Version 3: path in NEW -> entry; versions 1 and 2: sha256 -> entry.
    files: Mapping[str, DeltaFile]
    version: int = INDEX_VERSION
    #: NEW's TOC digest -> its patch (version 3).
    tocs: Mapping[str, TocPatch] = field(default_factory=dict)

    @property
    def by_path(self) -> bool:
        return self.version >= BY_PATH

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"from": str(self.old), "to": str(self.new)}
        if self.by_path:
            doc["version"] = INDEX_VERSION
            doc["tocs"] = [self.tocs[toc].to_json() for toc in sorted(self.tocs)]
            at = 0
            for path in sorted(self.files):
                if self.files[path].offset != at:
                    raise ValueError(f"{path}: version 3 entries lie end to end in path order")
                at = self.files[path].end
        else:
            bsdiff = any(f.method == BSDIFF for f in self.files.values())
            doc["version"] = 2 if bsdiff else 1
        doc["files"] = [self.files[key].to_json() for key in sorted(self.files)]
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        # Compressed: paths share long prefixes (versions 1 and 2: two hex digests an entry).
        return zstandard.ZstdCompressor(level=_LEVEL).compress(text)


def _hex(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise DeltaError(f"{where}: not a sha256 in hex: {value!r}")
    return value


def _count(row: Mapping[str, Any], key: str, where: str) -> int:
    value = row.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DeltaError(f"{where}: {key!r} must be a non-negative integer")
    return value


def _path(value: Any, where: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or value.startswith("/")
        or "\0" in value
        or ".." in value.split("/")
    ):
        raise DeltaError(f"{where}: not a relative path: {value!r}")
    return value


def _digest_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("sha256:"):
        raise DeltaError(f"{where}: not a sha256 digest: {value!r}")
    return f"sha256:{_hex(value[7:], where)}"


def _entry(row: Any, version: int, offset: int, at: str) -> DeltaFile:
    """An entry; version 3's lies at *offset* (the end of the one before)."""
    known = (PATCH, WHOLE) if version == 1 else METHODS
    if not isinstance(row, dict) or row.get("method") not in known:
        raise DeltaError(f"{at}: not an entry with a method of version {version}")
    method = str(row["method"])
    length = _count(row, "length", at)
    patch = method in PATCHES
    if version >= BY_PATH:
        path = _path(row.get("path"), at)
        base_path = _path(row.get("base", path), at) if patch else ""
        return DeltaFile("", 0, method, offset, length, path=path, base_path=base_path)
    size, offset = _count(row, "size", at), _count(row, "offset", at)
    base_size = _count(row, "baseSize", at) if patch else 0
    base = _hex(row.get("base"), at) if patch else ""
    return DeltaFile(_hex(row.get("sha256"), at), size, method, offset, length, base, base_size)


def _toc_patch(row: Any, at: str) -> TocPatch:
    if not isinstance(row, dict) or row.get("dictionary", TOC_ONLY) not in DICTIONARIES:
        raise DeltaError(f"{at}: not a TOC patch with a dictionary of {DICTIONARIES}")
    return TocPatch(
        _digest_text(row.get("toc"), at),
        _digest_text(row.get("base"), at),
        _count(row, "size", at),
        _count(row, "offset", at),
        _count(row, "length", at),
        row.get("dictionary") == TOC_FILES,
    )


def parse_index(raw: bytes, payload_size: int, where: str) -> DeltaIndex:
    """A delta's index (zstd-compressed JSON), every entry inside the payload."""
    text = _unzstd(raw, MAX_INDEX, "the delta index", where)
    try:
        doc = strictjson.loads(text)
        version = doc.get("version") if isinstance(doc, dict) else None
        if version not in INDEX_VERSIONS:
            raise DeltaError(f"{where}: not a delta index of version 1, 2 or 3 ({version!r})")
        old, new = Digest.parse(str(doc["from"])), Digest.parse(str(doc["to"]))
        rows = doc["files"]
        toc_rows = doc.get("tocs", []) if version >= BY_PATH else []
    except (strictjson.StrictJSONError, KeyError, ValueError) as exc:
        raise DeltaError(f"{where}: malformed delta index: {exc}") from None
    except AtollError as exc:
        raise DeltaError(f"{where}: malformed delta index: {exc}") from None
    if not isinstance(rows, list) or not isinstance(toc_rows, list):
        raise DeltaError(f"{where}: the delta index has no files list")
    files: dict[str, DeltaFile] = {}
    end = 0
    for i, row in enumerate(rows):
        at = f"{where}: files[{i}]"
        entry = _entry(row, version, end, at)
        end = entry.end
        if entry.end > payload_size:
            raise DeltaError(f"{at}: points past the end of the payload ({payload_size} bytes)")
        files[entry.path or entry.sha256] = entry
    tocs: dict[str, TocPatch] = {}
    for i, row in enumerate(toc_rows):
        at = f"{where}: tocs[{i}]"
        toc = _toc_patch(row, at)
        if toc.end > payload_size:
            raise DeltaError(f"{at}: points past the end of the payload ({payload_size} bytes)")
        tocs[toc.toc] = toc
    return DeltaIndex(old, new, files, version, tocs)


# --- finding and publishing -------------------------------------------------------------


@dataclass(frozen=True)
class FoundDelta:
    repository: str
    manifest: Digest
    index: DeltaIndex
    payload: Descriptor
    #: Bytes read to find it: the referrers listing, its manifest, its index.
    lookup_bytes: int


#: Requests :func:`find_delta` makes when there is no delta, and when there is one.
LOOKUP_REQUESTS = 2
FOUND_REQUESTS = 4


def _referrers(client: RegistryClient, repository: str, subject: Digest) -> list[Descriptor]:
    raw = client.referrers(repository, subject, ARTIFACT_TYPE)
    if raw is None:
        try:
            raw = client.get_manifest(repository, referrers_tag(subject)).raw
        except NotFoundError:
            return []
    where = f"{client.name(repository)}: referrers of {subject}"
    listed = strictjson.loads(raw)
    rows = listed.get("manifests") if isinstance(listed, dict) else None
    if not isinstance(rows, list):
        raise DeltaError(f"{where}: not an index of referrers")
    return [Descriptor.from_json(row, f"{where}: manifests[{i}]") for i, row in enumerate(rows)]


def find_delta(
    client: RegistryClient, repository: str, old: Digest, new: Digest
) -> FoundDelta | None:
    """The delta from *old* to *new* in *repository* (its index read and
    verified), or None when there is none."""
    for desc in _referrers(client, repository, new):
        if desc.annotations.get(FROM_ANNOTATION) != str(old):
            continue
        fetched = client.get_manifest(repository, str(desc.digest))
        where = f"{client.name(repository)}: delta {desc.digest}"
        manifest = parse_manifest(fetched.raw, fetched.media_type, where=where)
        data = json.loads(fetched.raw)
        subject = data.get("subject") or {}
        if data.get("artifactType") != ARTIFACT_TYPE or subject.get("digest") != str(new):
            raise DeltaError(f"{where}: not a delta for {new}")
        layers = manifest.layers if isinstance(manifest, ImageManifest) else ()
        kinds = [layer.media_type for layer in layers]
        if len(layers) != 2 or kinds != [INDEX_TYPE, PAYLOAD_TYPE]:
            raise DeltaError(f"{where}: layers must be an index and a payload, not {kinds}")
        index_desc, payload = layers
        if index_desc.size > MAX_INDEX:
            raise DeltaError(f"{where}: its index is larger than {MAX_INDEX} bytes")
        raw = client.fetch_blob(repository, index_desc.digest, index_desc.size)
        index = parse_index(raw, payload.size, where)
        if index.old != old or index.new != new:
            raise DeltaError(
                f"{where}: the index is for {index.old} -> {index.new}, not {old} -> {new}",
                hint="the delta was published under the wrong annotations; recreate it",
            )
        read = desc.size + len(fetched.raw) + index_desc.size
        return FoundDelta(repository, desc.digest, index, payload, read)
    return None


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data)} | extra


def push_delta(
    client: RegistryClient,
    repository: str,
    index: DeltaIndex,
    payload: bytes,
    subject: Descriptor,
) -> Digest:
    """Upload the artifact and list it under NEW's referrers tag; its digest."""
    raw_index = index.to_bytes()
    for blob in (EMPTY_CONFIG, raw_index, payload):
        digest = Digest.of(blob)
        if not client.blob_exists(repository, digest):
            client.upload_blob(repository, digest, [blob], size=len(blob))
    annotations = {FROM_ANNOTATION: str(index.old), TO_ANNOTATION: str(index.new)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST.value,
        "artifactType": ARTIFACT_TYPE,
        "config": _descriptor(MediaType.OCI_EMPTY.value, EMPTY_CONFIG),
        "layers": [_descriptor(INDEX_TYPE, raw_index), _descriptor(PAYLOAD_TYPE, payload)],
        "subject": {
            "mediaType": subject.media_type,
            "digest": str(subject.digest),
            "size": subject.size,
        },
        "annotations": annotations,
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    digest = client.put_manifest(repository, str(Digest.of(raw)), raw, MediaType.OCI_MANIFEST)
    if client.referrers(repository, subject.digest, ARTIFACT_TYPE) is not None:
        return digest  # the registry indexes the subject itself
    tag = referrers_tag(subject.digest)
    try:
        listed = strictjson.loads(client.get_manifest(repository, tag).raw)
    except NotFoundError:
        listed = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value, "manifests": []}
    rows = [
        row
        for row in listed.get("manifests", [])
        if isinstance(row, dict)
        and row.get("digest") != str(digest)
        # One delta per OLD: a new one replaces the old one's entry.
        and (row.get("annotations") or {}).get(FROM_ANNOTATION) != str(index.old)
    ]
    rows.append(
        _descriptor(MediaType.OCI_MANIFEST.value, raw, artifactType=ARTIFACT_TYPE)
        | {"annotations": annotations}
    )
    listed["manifests"] = rows
    tagged = json.dumps(listed, separators=(",", ":")).encode()
    client.put_manifest(repository, tag, tagged, MediaType.OCI_INDEX)
    return digest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
