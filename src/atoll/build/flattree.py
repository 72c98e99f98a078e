"""An image's layers flattened into one tree, each file's content kept once by digest.

The layers stream through :class:`atoll.store.tarstream.LayerFeed` (blob digest
and diff_id verified) into Python's tar reader; whiteouts apply as on an
overlay file system (``.wh.NAME`` hides NAME of lower layers, ``.wh..wh..opq``
empties a directory of lower layers' entries).  Nothing is unpacked by path:
regular files go to a content-addressed scratch directory, so no entry can
write outside it whatever its name::

    SCRATCH/objects/ab/cdef…    the content of a file, named by its sha256

A hard link becomes an entry sharing its target's ``inode`` key, so a writer
can link the names again when they land in the same layer.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import secrets
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from atoll.build.imagetree import layer_feeds
from atoll.errors import LayerError, from_oserror
from atoll.oci.context import SystemContext
from atoll.oci.imageinspect import read_config, select_manifest
from atoll.oci.manifest import ImageConfig, ImageManifest, parse_config
from atoll.oci.transports import ImageName, open_source
from atoll.progress import ProgressSink

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_PIECE = 1 << 20
#: Tar entry types kept (hard links are resolved to their target's content).
KINDS = frozenset(
    {tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE}
    | {tarfile.FIFOTYPE}
)


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    kind: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    #: pax records other than the ones tar derives from the fields (xattrs).
    pax: tuple[tuple[str, str], ...] = ()
    #: sha256 hex of a regular file's content.
    blob: str = ""
    #: Names of one file share this key (regular files only).
    inode: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == tarfile.DIRTYPE


@dataclass
class FlatTree:
    name: str
    manifest: ImageManifest
    config: ImageConfig
    scratch: Path
    entries: dict[str, Entry] = field(default_factory=dict)

    def object_path(self, blob: str) -> Path:
        return self.scratch / "objects" / blob[:2] / blob[2:]

    def read(self, path: str) -> bytes | None:
        entry = self.entries.get(path)
        if entry is None or entry.kind != tarfile.REGTYPE:
            return None
        return self.object_path(entry.blob).read_bytes()


class _FeedFile(io.RawIOBase):
    """A LayerFeed as a file for tarfile's stream mode."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buffer = piece
        n = min(len(view), len(self._buffer))
        view[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def normalize(path: str, where: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{where}: {path}: a path with '..' in it")
    return "/".join(parts)


def read_flat_tree(
    name: ImageName, ctx: SystemContext, scratch: Path, progress: ProgressSink
) -> FlatTree:
    """Read every layer of *name* (the platform's image of an index) into a FlatTree."""
    (scratch / "objects").mkdir(parents=True, exist_ok=True)
    with open_source(name, ctx) as source:
        _, manifest = select_manifest(source, ctx.platform)
        config = parse_config(read_config(source, manifest), where=source.description)
        tree = FlatTree(str(name), manifest, config, scratch)
        if len(config.diff_ids) != len(manifest.layers):
            raise LayerError(
                f"{source.description}: the config names {len(config.diff_ids)} layers, "
                f"the manifest {len(manifest.layers)}"
            )
        for index, where, feed in layer_feeds(source, manifest, config, str(name), progress):
            _read_layer(tree, iter(feed), index, where)
    return tree


def _store(tree: FlatTree, member: tarfile.TarInfo, tar: tarfile.TarFile, where: str) -> str:
    handle = tar.extractfile(member)
    if handle is None:
        raise LayerError(f"{where}: {member.name}: no content")
    sha = hashlib.sha256()
    tmp = tree.scratch / "objects" / f".in-{secrets.token_hex(6)}"
    try:
        with tmp.open("wb") as out:
            while piece := handle.read(_PIECE):
                sha.update(piece)
                out.write(piece)
        blob = sha.hexdigest()
        final = tree.object_path(blob)
        final.parent.mkdir(exist_ok=True)
        tmp.replace(final)
    except OSError as exc:
        raise from_oserror(exc, f"the scratch copy of {member.name}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return blob


def _read_layer(tree: FlatTree, pieces: Iterator[bytes], index: int, where: str) -> None:
    layer: dict[str, Entry] = {}
    removed: set[str] = set()
    opaque: set[str] = set()
    stream = cast(Any, io.BufferedReader(_FeedFile(pieces)))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _take(tree, tar, member, layer, removed, opaque, index, where)
    except tarfile.TarError as exc:
        raise LayerError(f"{where}: not a valid tar archive ({exc})") from None
    _apply(tree, layer, removed, opaque)


def _take(
    tree: FlatTree,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    layer: dict[str, Entry],
    removed: set[str],
    opaque: set[str],
    index: int,
    where: str,
) -> None:
    path = normalize(member.name, where)
    if not path:
        return
    parent, _, base = path.rpartition("/")
    if base == _OPAQUE:
        opaque.add(parent)
    elif base.startswith(_WHITEOUT):
        removed.add(posixpath.join(parent, base[len(_WHITEOUT) :]))
    else:
        layer[path] = _entry(tree, layer, tar, member, path, index, where)


def _entry(
    tree: FlatTree,
    layer: dict[str, Entry],
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    path: str,
    index: int,
    where: str,
) -> Entry:
    pax = tuple(sorted((k, v) for k, v in member.pax_headers.items() if k.startswith("SCHILY.")))
    pax = tuple((k, v) for k, v in pax if k not in ("SCHILY.devmajor", "SCHILY.devminor"))
    base = Entry(
        path,
        member.type if member.type != tarfile.AREGTYPE else tarfile.REGTYPE,
        member.mode & 0o7777,
        member.uid,
        member.gid,
        int(member.mtime),
        pax=pax,
    )
    if member.islnk():
        target = normalize(member.linkname, where)
        found = layer.get(target) or tree.entries.get(target)
        if found is None or found.kind != tarfile.REGTYPE:
            raise LayerError(f"{where}: {path}: a hard link to {target}, which is no file")
        return replace(found, path=path)
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        blob = _store(tree, member, tar, where)
        return replace(
            base, kind=tarfile.REGTYPE, size=member.size, blob=blob, inode=f"{index}:{path}"
        )
    if member.type not in KINDS:
        raise LayerError(f"{where}: {path}: unsupported tar entry type {member.type!r}")
    if member.issym():
        return replace(base, linkname=member.linkname)
    if member.ischr() or member.isblk():
        return replace(base, devmajor=member.devmajor, devminor=member.devminor)
    return base


def _below(entries: dict[str, Entry], roots: set[str]) -> list[str]:
    prefixes = tuple(f"{r}/" for r in roots if r)
    if "" in roots:
        return list(entries)
    return [p for p in entries if p in roots or p.startswith(prefixes)]


def _apply(tree: FlatTree, layer: dict[str, Entry], removed: set[str], opaque: set[str]) -> None:
    if removed:
        for path in _below(tree.entries, removed):
            del tree.entries[path]
    if opaque:
        for path in _below(tree.entries, opaque):
            if path not in opaque:
                del tree.entries[path]
    replaced = {
        p for p, e in layer.items() if not e.is_dir and p in tree.entries and tree.entries[p].is_dir
    }
    gone = [p for p in _below(tree.entries, replaced) if p not in replaced] if replaced else []
    for path in gone:
        del tree.entries[path]
    tree.entries.update(layer)
