"""zstd:chunked layers: per-file zstd frames, a table of contents, a tar-split.

A zstd:chunked layer is an ordinary ``application/vnd.oci.image.layer.v1.tar+zstd``
blob: every client that decompresses it gets the layer's tar back (zstd
decoders concatenate frames and skip skippable frames).  containers/storage
(podman 5) and atoll also read its table of contents (TOC) and fetch only the
files they lack, each one by an HTTP range.  The blob, as containers/storage
writes it and as :func:`compress_tar_zstd_chunked` writes it::

    offset 0
    ┌──────────────────────────────────────────────┐
    │ zstd frame: tar headers (and the padding of   │  headers of every entry up to
    │             the previous file)                │  the next regular file's data
    ├──────────────────────────────────────────────┤
    │ zstd frame: one regular file's contents       │  [offset, endOffset) in the TOC
    ├──────────────────────────────────────────────┤
    │   … header frame, file frame, …               │
    ├──────────────────────────────────────────────┤
    │ zstd frame: the end of the tar (padding,      │
    │             the two zero blocks)              │
    ├──────────────────────────────────────────────┤
    │ skippable frame 50 2A 4D 18, u32le length:    │  manifest-position annotation:
    │   zstd(TOC JSON)                              │  OFFSET:LENGTH:ULENGTH:1
    ├──────────────────────────────────────────────┤
    │ skippable frame: zstd(tar-split JSON lines)   │  tarsplit-position annotation:
    │                                               │  OFFSET:LENGTH:ULENGTH
    ├──────────────────────────────────────────────┤
    │ skippable frame, 64 bytes of footer: u64le    │  the same numbers, for readers
    │   TOC offset, length, ulength, type (1),      │  without the manifest
    │   tar-split offset, length, ulength,          │
    │   magic "GNUlInUx"                            │
    └──────────────────────────────────────────────┘

OFFSET in the annotations is where the frame's *payload* starts (after its
8-byte skippable-frame header).  Layer annotations in the image manifest:

``io.github.containers.zstd-chunked.manifest-checksum``
    ``sha256:HEX`` of the compressed TOC bytes.  The manifest (whose digest is
    what is signed and pinned) covers it; it covers the TOC; the TOC covers
    each file's ``sha256`` and the tar-split's digest: so a file fetched by
    range is verified before it is used, without the rest of the layer.
``io.github.containers.zstd-chunked.manifest-position``
    where the TOC is (above).
``io.github.containers.zstd-chunked.tarsplit-position``
    where the tar-split is (above).

The TOC (version :data:`TOC_VERSION`)::

    {"version": 1,
     "entries": [{"type": "reg"|"dir"|"symlink"|"hardlink"|"char"|"block"|"fifo",
                  "name": "usr/bin/x", "linkName": "…", "mode": 493, "size": 12,
                  "uid": 0, "gid": 0, "modtime": "RFC 3339", "accesstime": …,
                  "changetime": …, "devMajor": 0, "devMinor": 0,
                  "xattrs": {"security.capability": BASE64},
                  "digest": "sha256:…", "offset": N, "endOffset": M}, …],
     "tarSplitDigest": "sha256:…"}

Empty fields are left out, as Go's ``omitempty`` does.  containers/storage
also writes ``chunk`` entries that split big files at rolling-checksum
boundaries; atoll writes one frame per file and reads chunk entries only to
skip them (a file's ``offset``/``endOffset`` always span all its frames).

The tar-split (vbatts/tar-split's JSON packer) is what lets a reader rebuild
the byte-exact tar from the files: one JSON document per line, ``position``
counting from 0::

    {"type":2,"payload":"BASE64 raw tar bytes","position":0}
    {"type":1,"name":"usr/bin/x","size":12,"payload":"BASE64 crc64-ISO","position":1}

Type 2 segments hold headers and padding; type 1 entries stand for one
entry's contents (``payload`` null when the size is 0).

``org.atoll.zstd-chunked.tar-from-toc`` (value :data:`TAR_FROM_TOC_VERSION`)
    The writer found that the tar is exactly what Python's ``tarfile`` writes
    (PAX format, empty owner names, the end padded to a 10240-byte record) for
    the TOC's entries in order: a reader may then rebuild the tar from the
    TOC alone and skip the tar-split (:func:`split_from_toc`), which is about
    half of a changed layer's metadata.  The diff_id still decides: a reader
    whose ``tarfile`` writes other bytes fetches the tar-split after all.
    The blob is the same either way; the annotation is a hint, never trusted.  containers/storage
checks that the tar-split and the TOC list the same entries with the same
metadata, and rebuilds the tar from it; atoll does the same, so the layer's
``diff_id`` is checked after a partial pull exactly as after a whole one.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from atoll.errors import LayerError
from atoll.fsutil import atomic_writer

TOC_VERSION = 1
#: zstd level of the file frames unless asked otherwise (podman's; atoll rechunk
#: asks for its own, build.layerwrite.ZSTD_CHUNKED_LEVEL), and of the TOC and
#: tar-split always: every partial pull of a changed layer fetches them.
DEFAULT_LEVEL = 3
METADATA_LEVEL = 19
#: The name of the format where a compression is chosen (podman's name for it).
ZSTD_CHUNKED = "zstd:chunked"
MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION = "io.github.containers.zstd-chunked.tarsplit-position"
TAR_FROM_TOC = "org.atoll.zstd-chunked.tar-from-toc"
TAR_FROM_TOC_VERSION = "1"
#: The TOC type containers/storage writes and reads ("CRFS").
TOC_TYPE = 1
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
FOOTER_MAGIC = b"GNUlInUx"
FOOTER_SIZE = 64
#: Skippable frame header: magic and u32le length.
FRAME_HEADER = 8
#: Largest TOC or tar-split accepted (containers/storage: 150 MiB).
MAX_METADATA = 150 << 20
_TAR_SPLIT_FILE = 1
_TAR_SPLIT_SEGMENT = 2
_COPY = 1 << 20
_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}
_XATTR = "SCHILY.xattr."
_POSITION = re.compile(r"^(\d+):(\d+):(\d+)(?::(\d+))?$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ChunkedLayer:
    """A written zstd:chunked blob: its descriptor fields and the tar's digest."""

    digest: str
    size: int
    #: sha256 of the uncompressed tar (the image config's diff_id).
    diff_id: str
    annotations: Mapping[str, str] = field(default_factory=dict)


# --- writing -------------------------------------------------------------------------------


def _go_time(value: str | float) -> str:
    """A tar time (seconds, a PAX decimal string keeps nanoseconds) as Go's
    time.Time marshals it: RFC 3339, UTC, trailing zeros of the fraction cut."""
    whole, _, frac = str(value).partition(".")
    when = datetime.datetime.fromtimestamp(int(whole), datetime.UTC)
    frac = frac[:9].rstrip("0")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _raw_name(info: tarfile.TarInfo, header: bytes) -> str:
    """The entry's name as Go's tar reader gives it (tarfile drops a directory's
    trailing slash; containers/storage compares names byte for byte)."""
    if not info.isdir():
        return info.name
    raw = info.pax_headers.get("path")
    if raw is None:
        raw = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
        if prefix:
            raw = prefix.decode("utf-8", "surrogateescape") + "/" + raw
    return info.name + "/" if raw.rstrip("/") == info.name and raw.endswith("/") else info.name


def _toc_entry(info: tarfile.TarInfo, header: bytes) -> dict[str, Any]:
    kind = _TYPES.get(info.type)
    if kind is None:
        raise LayerError(
            f"tar entry {info.name!r} has type {info.type!r}, which zstd:chunked cannot describe"
        )
    entry: dict[str, Any] = {"type": kind, "name": _raw_name(info, header)}
    if info.linkname:
        entry["linkName"] = info.linkname
    for key, value in (
        ("mode", info.mode),
        ("size", info.size),
        ("uid", info.uid),
        ("gid", info.gid),
    ):
        if value:
            entry[key] = value
    if info.mtime:
        entry["modtime"] = _go_time(info.pax_headers.get("mtime", int(info.mtime)))
    for key, pax in (("accesstime", "atime"), ("changetime", "ctime")):
        if pax in info.pax_headers and float(info.pax_headers[pax]):
            entry[key] = _go_time(info.pax_headers[pax])
    if info.devmajor:
        entry["devMajor"] = info.devmajor
    if info.devminor:
        entry["devMinor"] = info.devminor
    xattrs = {
        key[len(_XATTR) :]: base64.b64encode(value.encode("utf-8", "surrogateescape")).decode()
        for key, value in sorted(info.pax_headers.items())
        if key.startswith(_XATTR)
    }
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


def _go_json(doc: Mapping[str, Any]) -> bytes:
    # Go's encoder escapes <, > and & in strings; match it so the tar-split
    # reads the same everywhere (ensure_ascii keeps the rest plain ASCII).
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class _TarSplit:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def add(self, kind: int, payload: bytes | None, name: str = "", size: int = 0) -> None:
        doc: dict[str, Any] = {"type": kind}
        if name:
            doc["name"] = name
        if size:
            doc["size"] = size
        doc["payload"] = base64.b64encode(payload).decode() if payload is not None else None
        doc["position"] = len(self.lines)
        self.lines.append(_go_json(doc) + b"\n")


def _crc64_iso_tables() -> tuple[list[int], ...]:
    """Slicing-by-8 tables for CRC-64/ISO (reflected polynomial 0xD8 << 56)."""
    poly = 0xD800000000000000
    first = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        first.append(crc)
    tables = [first]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ first[prev[i] & 0xFF] for i in range(256)])
    return tuple(tables)


_CRC64 = _crc64_iso_tables()
_MASK64 = 0xFFFFFFFFFFFFFFFF


@functools.cache
def _native_crc64() -> Callable[[bytes, int], int] | None:
    """fastcrc's CRC-64/GO-ISO (a compiled module, thousands of times faster),
    where it is installed: on build hosts it is a dependency; a device that
    only reads chunked layers computes no checksum."""
    try:
        from fastcrc import crc64
    except ImportError:
        return None
    return crc64.go_iso


def crc64_iso(data: bytes, crc: int = 0) -> int:
    """CRC-64/ISO as Go's hash/crc64 computes it (tar-split's file checksums);
    *crc* is the checksum of the data before, to continue it."""
    native = _native_crc64()
    if native is not None:
        return native(data, crc)
    return crc64_iso_python(data, crc)


def crc64_iso_python(data: bytes, crc: int = 0) -> int:
    """:func:`crc64_iso` in Python, eight bytes per step (about 10 MB/s)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _CRC64
    crc ^= _MASK64
    whole = len(data) & ~7
    for (word,) in struct.iter_unpack("<Q", memoryview(data)[:whole]):
        x = crc ^ word
        crc = (
            t7[x & 0xFF]
            ^ t6[(x >> 8) & 0xFF]
            ^ t5[(x >> 16) & 0xFF]
            ^ t4[(x >> 24) & 0xFF]
            ^ t3[(x >> 32) & 0xFF]
            ^ t2[(x >> 40) & 0xFF]
            ^ t1[(x >> 48) & 0xFF]
            ^ t0[x >> 56]
        )
    for byte in data[whole:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK64


_KINDS = {kind: tar_type for tar_type, kind in _TYPES.items() if tar_type != tarfile.AREGTYPE}
_GO_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z$")
_BLOCK = tarfile.BLOCKSIZE


def _entry_header(entry: Mapping[str, Any]) -> bytes | None:
    """The tar header(s) Python's tarfile writes for a TOC entry, or None when
    the entry holds what the TOC cannot say again (sub-second or access
    times, chunks, other PAX records)."""
    kind = _KINDS.get(entry.get("type", ""))
    name = entry.get("name")
    if kind is None or not isinstance(name, str) or "accesstime" in entry or "changetime" in entry:
        return None
    info = tarfile.TarInfo(name)
    info.type = kind
    try:
        info.mode = int(entry.get("mode", 0))
        info.uid, info.gid = int(entry.get("uid", 0)), int(entry.get("gid", 0))
        info.size = int(entry.get("size", 0)) if kind == tarfile.REGTYPE else 0
        info.devmajor = int(entry.get("devMajor", 0))
        info.devminor = int(entry.get("devMinor", 0))
        info.linkname = str(entry.get("linkName", ""))
        info.uname = info.gname = ""
        modtime = entry.get("modtime")
        if modtime is not None:
            match = _GO_TIME.match(str(modtime))
            if match is None:
                return None
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
            info.mtime = int(when.replace(tzinfo=datetime.UTC).timestamp())
        else:
            info.mtime = 0
        xattrs = entry.get("xattrs") or {}
        info.pax_headers = {
            _XATTR + key: base64.b64decode(value, validate=True).decode("utf-8", "surrogateescape")
            for key, value in xattrs.items()
        }
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except (ValueError, TypeError, AttributeError, UnicodeError, OverflowError):
        return None


def _tar_tail(end: int) -> int:
    """Bytes tarfile writes after the last entry's data ends at *end*: the
    padding of that data, two zero blocks, zeros to the next whole record."""
    closed = -(-end // _BLOCK) * _BLOCK + 2 * _BLOCK
    return -(-closed // tarfile.RECORDSIZE) * tarfile.RECORDSIZE - end


def split_from_toc(toc: Toc) -> list[SplitEntry] | None:
    """The tar-split a TOC implies when its layer is marked :data:`TAR_FROM_TOC`
    (see the module docstring), or None when an entry cannot be written again."""
    out: list[SplitEntry] = []
    end = pad = 0
    for entry in toc.entries:
        header = _entry_header(entry)
        if header is None:
            return None
        size = int(entry.get("size", 0)) if entry.get("type") == "reg" else 0
        out.append(SplitEntry(bytes(pad) + header))
        out.append(SplitEntry(None, str(entry["name"]), size))
        end += pad + len(header) + size
        pad = -size % _BLOCK
    out.append(SplitEntry(bytes(_tar_tail(end))))
    return out


def _skippable(data: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


def compress_tar_zstd_chunked(
    tar_path: Path, out_path: Path, *, level: int = DEFAULT_LEVEL
) -> ChunkedLayer:
    """Write *tar_path* as a zstd:chunked blob at *out_path* (atomically).

    The same tar gives the same bytes: frames, TOC and tar-split depend only on
    the tar and *level* (the frames' level; the TOC and tar-split, which every
    partial pull of a changed layer fetches whole, always at :data:`METADATA_LEVEL`)."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)
    meta = zstandard.ZstdCompressor(level=METADATA_LEVEL)
    blob_hash = hashlib.sha256()
    tar_hash = hashlib.sha256()
    entries: list[dict[str, Any]] = []
    split = _TarSplit()
    written = 0
    # Whether the tar is what tarfile writes for the TOC (TAR_FROM_TOC).
    from_toc = True

    def emit(out: IO[bytes], data: bytes) -> None:
        nonlocal written
        out.write(data)
        blob_hash.update(data)
        written += len(data)

    def write(out: IO[bytes]) -> None:
        nonlocal from_toc
        with tar_path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            pad = 0  # the padding of the previous entry's data
            pending = bytearray()  # tar bytes not yet in a frame
            position = 0  # bytes of the tar consumed
            for info in tar:
                raw.seek(position)
                head = raw.read(info.offset_data - position)
                tar_hash.update(head)
                pending += head
                split.add(_TAR_SPLIT_SEGMENT, head)
                header = head[-512:]
                entry = _toc_entry(info, header)
                size = info.size if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
                if from_toc:
                    again = _entry_header(entry)
                    from_toc = again is not None and head == bytes(pad) + again
                    pad = -size % _BLOCK
                position = info.offset_data
                crc_payload: bytes | None = None
                if size:
                    emit(out, cctx.compress(bytes(pending)))
                    pending.clear()
                    entry["offset"] = written
                    # One frame per file, streamed: memory does not grow with its size.
                    frame = cctx.compressobj(size=size)
                    file_hash, crc, left = hashlib.sha256(), 0, size
                    while left:
                        piece = raw.read(min(left, _COPY))
                        if not piece:
                            raise LayerError(f"{tar_path}: entry {info.name!r} is cut short")
                        left -= len(piece)
                        tar_hash.update(piece)
                        file_hash.update(piece)
                        crc = crc64_iso(piece, crc)
                        emit(out, frame.compress(piece))
                    emit(out, frame.flush())
                    entry["digest"] = "sha256:" + file_hash.hexdigest()
                    entry["endOffset"] = written
                    crc_payload = struct.pack(">Q", crc)
                    position += size
                split.add(_TAR_SPLIT_FILE, crc_payload, name=entry["name"], size=info.size)
                entries.append(entry)
            raw.seek(position)
            tail_size = 0
            while tail := raw.read(_COPY):
                tail_size += len(tail)
                from_toc = from_toc and not tail.strip(b"\0")
                tar_hash.update(tail)
                pending += tail
                split.add(_TAR_SPLIT_SEGMENT, tail)
            from_toc = from_toc and tail_size == _tar_tail(position)
        emit(out, cctx.compress(bytes(pending)))
        tar_split = b"".join(split.lines)
        split_z = meta.compress(tar_split)
        toc = {
            "version": TOC_VERSION,
            "entries": entries,
            "tarSplitDigest": "sha256:" + hashlib.sha256(split_z).hexdigest(),
        }
        toc_raw = _go_json(toc)
        toc_z = meta.compress(toc_raw)
        toc_offset = written + FRAME_HEADER
        emit(out, _skippable(toc_z))
        split_offset = written + FRAME_HEADER
        emit(out, _skippable(split_z))
        footer = struct.pack(
            "<7Q",
            toc_offset,
            len(toc_z),
            len(toc_raw),
            TOC_TYPE,
            split_offset,
            len(split_z),
            len(tar_split),
        )
        emit(out, _skippable(footer + FOOTER_MAGIC))
        notes[MANIFEST_CHECKSUM] = "sha256:" + hashlib.sha256(toc_z).hexdigest()
        notes[MANIFEST_POSITION] = f"{toc_offset}:{len(toc_z)}:{len(toc_raw)}:{TOC_TYPE}"
        notes[TARSPLIT_POSITION] = f"{split_offset}:{len(split_z)}:{len(tar_split)}"
        if from_toc:
            notes[TAR_FROM_TOC] = TAR_FROM_TOC_VERSION

    notes: dict[str, str] = {}
    try:
        with atomic_writer(out_path) as out:
            write(out)
    except (tarfile.TarError, zstandard.ZstdError) as exc:
        raise LayerError(f"{tar_path}: cannot write it as zstd:chunked: {exc}") from None
    return ChunkedLayer(
        digest="sha256:" + blob_hash.hexdigest(),
        size=written,
        diff_id="sha256:" + tar_hash.hexdigest(),
        annotations=dict(sorted(notes.items())),
    )


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    offset: int
    length: int
    uncompressed: int


@dataclass(frozen=True)
class ChunkedInfo:
    """What the layer annotations say (not yet checked against the blob)."""

    toc_digest: str
    toc: Position
    tar_split: Position | None


def chunked_info(annotations: Mapping[str, str], blob_size: int, where: str) -> ChunkedInfo | None:
    """The TOC's digest and position from *annotations*; None when the layer is
    not zstd:chunked.  Positions outside the blob are refused."""
    digest = annotations.get(MANIFEST_CHECKSUM)
    position = annotations.get(MANIFEST_POSITION)
    if digest is None or position is None:
        return None
    if not _SHA256.match(digest):
        raise LayerError(
            f"{where}: the {MANIFEST_CHECKSUM} annotation {digest!r} is not a sha256 digest"
        )
    toc = _position(position, blob_size, where, MANIFEST_POSITION, toc=True)
    split_text = annotations.get(TARSPLIT_POSITION)
    split = _position(split_text, blob_size, where, TARSPLIT_POSITION) if split_text else None
    return ChunkedInfo(digest, toc, split)


def _position(text: str, blob_size: int, where: str, key: str, *, toc: bool = False) -> Position:
    match = _POSITION.match(text)
    if match is None or (toc and match.group(4) is None) or (not toc and match.group(4)):
        raise LayerError(f"{where}: the {key} annotation {text!r} is malformed")
    offset, length, uncompressed = (int(match.group(i)) for i in (1, 2, 3))
    if toc and int(match.group(4)) != TOC_TYPE:
        raise LayerError(f"{where}: the TOC has type {match.group(4)}, not {TOC_TYPE}")
    if offset < FRAME_HEADER or length <= 0 or offset + length > blob_size:
        raise LayerError(
            f"{where}: the {key} annotation {text!r} points outside the layer ({blob_size} bytes)"
        )
    if length > MAX_METADATA or uncompressed > MAX_METADATA:
        raise LayerError(
            f"{where}: the {key} annotation says {uncompressed} bytes, more than atoll reads"
        )
    return Position(offset, length, uncompressed)


@dataclass(frozen=True)
class TocFile:
    """One regular file with contents, as the TOC places it."""

    name: str
    size: int
    #: Hex sha256 of the contents.
    sha256: str
    offset: int
    end: int


@dataclass(frozen=True)
class Toc:
    files: tuple[TocFile, ...]
    tar_split_digest: str
    #: Where the TOC frame starts: every file's frames lie before it.
    data_end: int
    #: Every entry as the TOC has it (for :func:`split_from_toc`).
    entries: tuple[Mapping[str, Any], ...] = ()


def _unzstd(data: bytes, expected: int, where: str, what: str) -> bytes:
    import zstandard

    try:
        out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as exc:
        raise LayerError(f"{where}: the {what} is not valid zstd data: {exc}") from None
    if len(out) != expected:
        raise LayerError(f"{where}: the {what} is {len(out)} bytes uncompressed, not {expected}")
    return out


def parse_toc(data: bytes, info: ChunkedInfo, where: str) -> Toc:
    """Check the compressed TOC *data* against the annotation digest, then read it.

    Refused: a digest mismatch, a TOC that is not version 1, files whose frames
    lie outside the layer's data or overlap the TOC, a missing tar-split digest."""
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != info.toc_digest:
        raise LayerError(
            f"{where}: its table of contents does not match the manifest's "
            f"{MANIFEST_CHECKSUM} annotation (got {got})",
            hint="the registry served other bytes than the signed manifest names",
        )
    try:
        doc = json.loads(_unzstd(data, info.toc.uncompressed, where, "table of contents"))
    except ValueError as exc:
        raise LayerError(f"{where}: the table of contents is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != TOC_VERSION:
        raise LayerError(f"{where}: the table of contents is not version {TOC_VERSION}")
    split_digest = doc.get("tarSplitDigest")
    if not isinstance(split_digest, str) or not _SHA256.match(split_digest):
        raise LayerError(f"{where}: the table of contents names no tar-split digest")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise LayerError(f"{where}: the table of contents has no entries list")
    data_end = info.toc.offset - FRAME_HEADER
    files: list[TocFile] = []
    for raw in entries:
        if not isinstance(raw, dict):
            raise LayerError(f"{where}: the table of contents has an entry that is not an object")
        if raw.get("type") != "reg" or not raw.get("size"):
            continue
        name = raw.get("name")
        size, digest = raw.get("size"), raw.get("digest")
        offset, end = raw.get("offset", 0), raw.get("endOffset", 0)
        if not (
            isinstance(name, str)
            and isinstance(size, int)
            and isinstance(digest, str)
            and _SHA256.match(digest)
            and isinstance(offset, int)
            and isinstance(end, int)
        ):
            raise LayerError(f"{where}: the table of contents entry {name!r} is malformed")
        if not 0 <= offset < end <= data_end:
            raise LayerError(
                f"{where}: the table of contents places {name!r} at bytes {offset}-{end}, "
                f"outside the layer's data (0-{data_end})"
            )
        files.append(TocFile(name, size, digest[7:], offset, end))
    return Toc(tuple(files), split_digest, data_end, tuple(entries))


@dataclass(frozen=True)
class SplitEntry:
    """One tar-split line: raw tar bytes, or a stand-in for an entry's contents."""

    raw: bytes | None
    name: str = ""
    size: int = 0
    crc: bytes | None = None


def parse_tar_split(data: bytes, toc: Toc, info: ChunkedInfo, where: str) -> list[SplitEntry]:
    """Check the compressed tar-split against the TOC, then read it."""
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != toc.tar_split_digest:
        raise LayerError(
            f"{where}: its tar-split does not match the digest in its table of contents"
        )
    assert info.tar_split is not None
    text = _unzstd(data, info.tar_split.uncompressed, where, "tar-split")
    out: list[SplitEntry] = []
    try:
        for position, line in enumerate(text.splitlines()):
            doc = json.loads(line)
            if doc.get("position") != position:
                raise ValueError(f"line {position + 1} has position {doc.get('position')}")
            payload = doc.get("payload")
            blob = base64.b64decode(payload, validate=True) if payload is not None else None
            if doc.get("type") == _TAR_SPLIT_SEGMENT:
                out.append(SplitEntry(blob or b""))
            elif doc.get("type") == _TAR_SPLIT_FILE:
                name = doc.get("name")
                if name is None and "name_raw" in doc:
                    name = os.fsdecode(base64.b64decode(doc["name_raw"]))
                size = doc.get("size", 0)
                if not isinstance(name, str) or not isinstance(size, int) or size < 0:
                    raise ValueError(f"line {position + 1} is a malformed file entry")
                out.append(SplitEntry(None, name, size, blob))
            else:
                raise ValueError(f"line {position + 1} has an unknown type")
    except (ValueError, TypeError, AttributeError) as exc:
        raise LayerError(f"{where}: its tar-split is malformed: {exc}") from None
    return out


def decode_file(frames: bytes, file: TocFile, where: str) -> bytes:
    """A regular file's contents from its frames, checked against the TOC."""
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(frames), read_across_frames=True
        )
        data = reader.read(file.size + 1)
    except zstandard.ZstdError as exc:
        raise LayerError(
            f"{where}: the frames of {file.name!r} are not valid zstd data: {exc}"
        ) from None
    if len(data) != file.size or hashlib.sha256(data).hexdigest() != file.sha256:
        raise LayerError(
            f"{where}: the frames of {file.name!r} do not hold the file "
            "its table of contents describes",
            hint="the image is corrupt or was tampered with",
        )
    return data


def iter_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_COPY):
            yield chunk
