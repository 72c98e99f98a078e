"""Layer records: what one layer did to the tree, kept so that the layer can be
applied again without reading it.

A layer-chain record (:mod:`atoll.store.chains`) stands for a *prefix* of an
image's layers: once one layer changes, every layer above it used to be read
again, although the store holds each of their files.  Images rechunked into
groups (:mod:`atoll.build.rechunk`) change a few groups in the middle of the
list, so most of an update's layers sat above a changed one.  A layer record
names the layer by its diff_id and lists its tar entries in order, each regular
file by the object its contents went into, so the importer replays the entries
through the same code that read them (whiteouts, hardlinks and implied
directories behave exactly as they did) and never asks the source for the layer.

``state/layers/<diff_id hex>`` (format version :data:`LAYER_RECORD_VERSION`),
zlib-compressed canonical JSON::

    {"diff_id": "sha256:…", "version": 1,
     "entries": [[path, kind, mode, uid, gid, size, linkname, devmajor, devminor,
                  {xattr name: base64 value} | null, file object id | null], …]}

A record is written after the commit of the import that read the layer and
checked its diff_id, like a chain record: it stands for exactly the bytes that
diff_id names.  An import uses it only when every file object it names is in the
store; gc removes the records of layers no kept commit has; fsck reports records
that do not parse (repair removes them), and imports ignore those.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from atoll.fsutil import fsync_dir, write_atomic
from atoll.store.format import STATE_DIR, canonical_json, is_object_id, list_names
from atoll.store.tarstream import TarEntry

LAYER_RECORD_VERSION = 1
LAYERS_DIR = "layers"
_SHA256 = "sha256:"
_FIELDS = 11


def layers_dir(store_path: Path) -> Path:
    return store_path / STATE_DIR / LAYERS_DIR


def record_names(store_path: Path) -> list[str]:
    """Every name in ``state/layers/`` (records, and whatever else is there)."""
    folder = layers_dir(store_path)
    return sorted(list_names(folder)) if folder.is_dir() else []


def _hex(diff_id: str) -> str | None:
    hex_ = diff_id[len(_SHA256) :] if diff_id.startswith(_SHA256) else ""
    return hex_ if is_object_id(hex_) else None


def encode_layer_record(diff_id: str, entries: Iterable[tuple[TarEntry, str | None]]) -> bytes:
    rows = [
        [
            e.path,
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            e.size,
            e.linkname,
            e.devmajor,
            e.devminor,
            {k: base64.b64encode(v).decode() for k, v in e.xattrs.items()} if e.xattrs else None,
            oid,
        ]
        for e, oid in entries
    ]
    doc = {"diff_id": diff_id, "entries": rows, "version": LAYER_RECORD_VERSION}
    return zlib.compress(canonical_json(doc), 6)


def _entry(row: Any) -> tuple[TarEntry, str | None]:
    if not isinstance(row, list) or len(row) != _FIELDS:
        raise ValueError("an entry is not a list of 11 fields")
    path, kind, mode, uid, gid, size, linkname, major, minor, xattrs, oid = row
    if not (isinstance(path, str) and isinstance(kind, str) and isinstance(linkname, str)):
        raise ValueError("an entry's path, kind or link is not a string")
    if not all(type(n) is int and n >= 0 for n in (mode, uid, gid, size, major, minor)):
        raise ValueError(f"entry {path!r} has a number that is not a whole number")
    if oid is not None and not (isinstance(oid, str) and is_object_id(oid)):
        raise ValueError(f"entry {path!r} names no valid file object")
    decoded: dict[str, bytes] | None = None
    if xattrs is not None:
        if not isinstance(xattrs, dict) or not all(isinstance(v, str) for v in xattrs.values()):
            raise ValueError(f"entry {path!r} has invalid xattrs")
        decoded = {k: base64.b64decode(v, validate=True) for k, v in xattrs.items()}
    return TarEntry(path, kind, mode, uid, gid, size, linkname, major, minor, decoded), oid


def decode_layer_record(name: str, data: bytes) -> list[tuple[TarEntry, str | None]]:
    """The entries of the record ``state/layers/<name>``; ValueError says what is wrong."""
    try:
        doc: Any = json.loads(zlib.decompress(data))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not compressed JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("version") != LAYER_RECORD_VERSION:
        raise ValueError(f"record version {doc.get('version')!r} is not {LAYER_RECORD_VERSION}")
    if doc.get("diff_id") != f"{_SHA256}{name}":
        raise ValueError(f"names layer {doc.get('diff_id')!r}, not its file name")
    rows = doc.get("entries")
    if not isinstance(rows, list):
        raise ValueError("'entries' is not a list")
    try:
        return [_entry(row) for row in rows]
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def read_layer_record(store_path: Path, diff_id: str) -> list[tuple[TarEntry, str | None]] | None:
    """The entries recorded for *diff_id*, or None when there is no valid record."""
    name = _hex(diff_id)
    if name is None:
        return None
    try:
        return decode_layer_record(name, (layers_dir(store_path) / name).read_bytes())
    except (OSError, ValueError):
        return None


def write_layer_record(store_path: Path, diff_id: str, data: bytes) -> None:
    """Write an encoded record (atomically) unless one is there already."""
    name = _hex(diff_id)
    if name is None:
        return
    folder = layers_dir(store_path)
    path = folder / name
    if path.exists():
        return
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)
    write_atomic(path, data)


def prune_layer_records(store_path: Path, live_diff_ids: set[str]) -> None:
    """Remove the records of layers that no kept commit has (and leftovers)."""
    folder = layers_dir(store_path)
    removed = False
    for name in record_names(store_path):
        if f"{_SHA256}{name}" not in live_diff_ids:
            (folder / name).unlink(missing_ok=True)
            removed = True
    if removed:
        fsync_dir(folder)
