"""Reproducible layers: the same entries give byte-identical blobs.

A layer is first written as an uncompressed tar, then compressed by a
:class:`LayerEncoder`.  The tar is a function of the entries alone:

* entries sorted by path, every parent directory before its children;
* PAX format, numeric owners only (``uname``/``gname`` empty);
* file mtimes clamped to an epoch (``SOURCE_DATE_EPOCH`` or the image's
  creation time), directory mtimes :data:`DIRECTORY_MTIME`, no access or
  change times;
* names of one file in one layer written as a file and hard links to it.

Encoders are plain callables ``(tar_path, out_path) -> EncodedLayer`` with
fixed parameters (gzip: level 6, no name, mtime 0; zstd: level 3, one thread,
no content size; zstd:chunked: frames at level 19), so another format
(zstd:chunked, which adds a table of contents as annotations) plugs in without
changing the writer.  ``--compression-level`` picks another fixed level
(:func:`encoder_named`): the level is part of what makes a layer's bytes, so
an image keeps its layer digests across rebuilds only at the same level.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from atoll.build.flattree import Entry, FlatTree
from atoll.errors import UsageError, from_oserror
from atoll.fsutil import HashingWriter
from atoll.oci.digest import Digest
from atoll.oci.manifest import MediaType

_PIECE = 1 << 20
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
#: The file frames of zstd:chunked layers.  A device fetches them one by one, so
#: each file is compressed alone and a higher level is the only lever left: on
#: the bench's Debian security update the files a device lacks take 12.7 % fewer
#: bytes at 19 than at 3, for about 50 s of one core per 120 MB image (2.5 MB/s
#: against 125 MB/s; docs/performance.md). Built once, fetched by every device.
ZSTD_CHUNKED_LEVEL = 19
#: The mtime of every directory in a layer.
DIRECTORY_MTIME = 0


class EncodedLike(Protocol):
    """What an encoder returns (a ChunkedLayer fits as well)."""

    @property
    def digest(self) -> Digest | str: ...
    @property
    def size(self) -> int: ...
    @property
    def diff_id(self) -> Digest | str: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class EncodedLayer:
    digest: Digest
    size: int
    diff_id: Digest
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerEncoder:
    name: str
    media_type: str
    encode: Callable[[Path, Path], EncodedLike]
    #: The level *encode* compresses at, and the levels the format takes.
    level: int = 0
    levels: tuple[int, int] = (0, 0)


def _sha256_file(path: Path) -> Digest:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(_PIECE):
            sha.update(piece)
    return Digest.parse("sha256:" + sha.hexdigest())


def _encode_gzip(tar_path: Path, out_path: Path, *, level: int) -> EncodedLayer:
    with tar_path.open("rb") as src, out_path.open("wb") as raw:
        packed = HashingWriter(raw)
        with gzip.GzipFile(
            filename="", fileobj=packed, mode="wb", compresslevel=level, mtime=0
        ) as gz:
            while piece := src.read(_PIECE):
                gz.write(piece)
    return EncodedLayer(
        Digest.parse("sha256:" + packed.sha.hexdigest()), packed.size, _sha256_file(tar_path)
    )


def _encode_zstd(tar_path: Path, out_path: Path, *, level: int) -> EncodedLayer:
    import zstandard

    compressor = zstandard.ZstdCompressor(
        level=level, threads=0, write_content_size=False, write_checksum=True
    )
    with tar_path.open("rb") as src, out_path.open("wb") as raw:
        packed = HashingWriter(raw)
        with compressor.stream_writer(packed, closefd=False) as writer:  # type: ignore[arg-type]
            while piece := src.read(_PIECE):
                writer.write(piece)
    return EncodedLayer(
        Digest.parse("sha256:" + packed.sha.hexdigest()), packed.size, _sha256_file(tar_path)
    )


def _encode_zstd_chunked(tar_path: Path, out_path: Path, *, level: int) -> EncodedLayer:
    # Per-file frames and a table of contents: devices fetch only the files they lack.
    from atoll.oci.chunked import compress_tar_zstd_chunked

    layer = compress_tar_zstd_chunked(tar_path, out_path, level=level)
    return EncodedLayer(
        Digest.parse(layer.digest), layer.size, Digest.parse(layer.diff_id), layer.annotations
    )


def _encoder(
    name: str, media_type: MediaType, write: Callable[..., EncodedLike], level: int, top: int
) -> LayerEncoder:
    encode = functools.partial(write, level=level)
    return LayerEncoder(name, media_type.value, encode, level, (1, top))


#: zstd levels above 19 need a larger window to decode: not for small devices.
ZSTD_MAX_LEVEL = 19
ENCODERS: dict[str, LayerEncoder] = {
    "gzip": _encoder("gzip", MediaType.OCI_LAYER_GZIP, _encode_gzip, GZIP_LEVEL, 9),
    "zstd": _encoder("zstd", MediaType.OCI_LAYER_ZSTD, _encode_zstd, ZSTD_LEVEL, ZSTD_MAX_LEVEL),
    "zstd:chunked": _encoder(
        "zstd:chunked",
        MediaType.OCI_LAYER_ZSTD,
        _encode_zstd_chunked,
        ZSTD_CHUNKED_LEVEL,
        ZSTD_MAX_LEVEL,
    ),
}
_WRITERS = {"gzip": _encode_gzip, "zstd": _encode_zstd, "zstd:chunked": _encode_zstd_chunked}


def encoder_named(name: str, level: int | None = None) -> LayerEncoder:
    """The encoder of *name*, at *level* (None: the format's default)."""
    try:
        encoder = ENCODERS[name]
    except KeyError:
        raise UsageError(
            f"unknown layer compression {name!r} (known: {', '.join(sorted(ENCODERS))})"
        ) from None
    if level is None or level == encoder.level:
        return encoder
    low, high = encoder.levels
    if not low <= level <= high:
        raise UsageError(f"{name} takes a compression level from {low} to {high}, not {level}")
    return _encoder(name, MediaType(encoder.media_type), _WRITERS[name], level, high)


def _info(entry: Entry, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.type = entry.kind
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    # A new file in /usr/bin changes the directory's mtime; kept, it would change
    # every layer holding something in /usr/bin.  ostree keeps no mtimes at all.
    info.mtime = DIRECTORY_MTIME if entry.is_dir else min(entry.mtime, epoch)
    info.size = entry.size if entry.kind == tarfile.REGTYPE else 0
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.pax:
        info.pax_headers = dict(entry.pax)
    return info


def with_parents(tree: FlatTree, paths: Iterable[str], epoch: int) -> list[Entry]:
    """The entries of *paths* and of every directory above them, sorted by path."""
    chosen: dict[str, Entry] = {}
    for path in paths:
        chosen[path] = tree.entries[path]
        parent = path.rpartition("/")[0]
        while parent and parent not in chosen:
            found = tree.entries.get(parent)
            if found is None or not found.is_dir:
                # A parent the image never listed: the usual default, at the epoch.
                found = Entry(parent, tarfile.DIRTYPE, 0o755, 0, 0, epoch)
            chosen[parent] = found
            parent = parent.rpartition("/")[0]
    return [chosen[p] for p in sorted(chosen)]


def write_tar(tree: FlatTree, entries: list[Entry], epoch: int, out_path: Path) -> None:
    """Write *entries* (sorted) as a reproducible tar to *out_path*."""
    first: dict[str, str] = {}
    try:
        with (
            out_path.open("wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for entry in entries:
                if entry.kind == tarfile.REGTYPE and entry.inode in first:
                    link = replace(entry, kind=tarfile.LNKTYPE, linkname=first[entry.inode])
                    tar.addfile(_info(link, epoch))
                elif entry.kind == tarfile.REGTYPE:
                    first[entry.inode] = entry.path
                    with tree.object_path(entry.blob).open("rb") as content:
                        tar.addfile(_info(entry, epoch), content)
                else:
                    tar.addfile(_info(entry, epoch))
    except OSError as exc:
        raise from_oserror(exc, f"layer {out_path}") from exc
