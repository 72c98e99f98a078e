"""The on-disk format of the object store (version :data:`STORE_VERSION`).

Like an ostree repository in ``bare`` mode: every distinct file is stored once,
as a real file that carries its own mode, owner and extended attributes, so a
checkout can hardlink it.  Layout::

    STORE/
    ├── store.json                 {"format": "atoll-store", "version": 1}, and
    │                              optionally "max_layer_size": BYTES (the most
    │                              one layer may expand to)
    ├── lock                       flock: exclusive for writers (import, gc, refs,
    │                              fsck --repair), shared for checkouts
    ├── objects/
    │   └── ab/                    the first two hex digits of the id (all 256
    │       │                      made by Store.create)
    │       ├── cdef….file         a file object: regular file, symlink, device
    │       │                      or fifo with its real mode, uid, gid, xattrs;
    │       │                      mtime 0
    │       ├── cdef….tree         a tree object: canonical JSON (below)
    │       └── cdef….commit       a commit object: canonical JSON (below)
    ├── refs/
    │   └── images/default         a ref: a commit id and a newline ('/' allowed)
    ├── state/
    │   ├── manifests/<hex>        commit imported from the manifest sha256:<hex>
    │   │                          (a cache to make re-imports cheap; checked on use)
    │   ├── chains/<hex>           layer-chain record: the merged tree after the
    │   │                          first k layers of an image whose k-th OCI ChainID
    │   │                          is sha256:<hex> (below; checked on use)
    │   └── partial/<commit id>    marker: fsck --repair removed objects this commit
    │                              reaches; the next import of its image re-fetches
    └── tmp/
        └── staging-<random>/      objects of an import in progress (flat names
                                   <id>.<kind>); never referenced by anything

Ids are 64 lowercase hex digits: the sha256 of the object's canonical bytes.

**File objects.**  The id is the sha256 of a header followed by the content
(regular files only).  The header is binary, big-endian::

    MAGIC       8 bytes   b"ATOLLF\\x00\\x01"
    type        u8        FileType: 1 regular, 2 symlink, 3 char, 4 block, 5 fifo
    mode        u32       permission bits, setuid/setgid/sticky included (& 0o7777)
    uid, gid    u32, u32
    size        u64       content length (0 unless regular)
    rdev        u64       device number (0 unless char/block)
    target      u32 length + bytes    symlink target (empty unless symlink)
    xattrs      u32 count, then per attribute sorted by name:
                u32 length + name bytes, u32 length + value bytes

mtime is never part of it: two files that differ only in time are one object.

**Tree objects** (one per directory) map names to file ids, and names of
subdirectories to a tree id plus the subdirectory's own metadata::

    {"dirs": {"NAME": {"gid": 0, "mode": 493, "tree": "<id>", "uid": 0,
                        "xattrs": {"NAME": "<base64 value>"}}},
     "files": {"NAME": "<file id>"}}

**Commit objects**::

    {"config_digest": "sha256:…", "diff_ids": ["sha256:…", …],
     "image": "docker://…", "manifest_digest": "sha256:…", "parent": null | "<id>",
     "root": {"gid": 0, "mode": 493, "uid": 0, "xattrs": {}},
     "subject": "…", "timestamp": 1767225600, "tree": "<id>", "version": null | "1.2"}

**Layer-chain records** (``state/chains/<hex>``; added in version 1, which older
atoll ignores: nothing else names them, and every reader checks them on use).
The ChainID of the first k layers comes from the image config's
``rootfs.diff_ids`` as the OCI image spec defines it:
``chainid(L0) = diffid(L0)``, ``chainid(Ln) = sha256(chainid(Ln-1) + " " +
diffid(Ln))`` (the digests as ``sha256:<hex>`` strings).  A record is written
(atomically, after the commit of the import that verified those layers) for
the first layer, the whole list, and the prefixes between whose trees cost
little to write (the rule is in :mod:`atoll.store.importer`; one record per
prefix grew the store with the square of the layers)::

    {"chain_id": "sha256:…", "layers": 2, "root": {"gid": 0, "mode": 493, …},
     "special": false, "tree": "<id>", "version": 1}

``tree`` and ``root`` are the root tree and root directory metadata of the
layers' merged tree; ``special`` says whether those layers held device nodes or
fifos (an import that refuses them does not reuse the record).  An import
starts from the longest record whose objects are all present and reads only
the layers above it.  gc keeps a record, and what it reaches, while a kept
commit's ``diff_ids`` have that chain as a prefix, and removes it otherwise;
fsck reports records that are invalid or reach missing objects (repair removes
them).

Canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``; names that are not UTF-8 travel as surrogate escapes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from atoll.errors import InvalidInputError

STORE_VERSION = 1
FORMAT_NAME = "atoll-store"

CONFIG_FILE = "store.json"
LOCK_FILE = "lock"
OBJECTS_DIR = "objects"
REFS_DIR = "refs"
STATE_DIR = "state"
TMP_DIR = "tmp"
MANIFESTS_DIR = "manifests"
CHAINS_DIR = "chains"
PARTIAL_DIR = "partial"
STAGING_PREFIX = "staging-"

FILE_SUFFIX = "file"
TREE_SUFFIX = "tree"
COMMIT_SUFFIX = "commit"

FILE_MAGIC = b"ATOLLF\x00\x01"
_FIXED = struct.Struct(">8sBIIIQQ")
_U32 = struct.Struct(">I")

ID_LENGTH = 64
#: Largest uid or gid of a file or directory: 2**32 - 1 is (uid_t)-1, "no change" to chown.
MAX_ID = 2**32 - 2
_ID_RE = re.compile(r"[0-9a-f]{64}")
_REF_COMPONENT = re.compile(r"[A-Za-z0-9_+@:-][A-Za-z0-9._+@:-]{0,254}")


class FileType(IntEnum):
    REGULAR = 1
    SYMLINK = 2
    CHAR = 3
    BLOCK = 4
    FIFO = 5


class EntryKind(StrEnum):
    """What a path in a commit is."""

    FILE = "file"
    SYMLINK = "symlink"
    DIR = "dir"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


KIND_OF_TYPE = {
    FileType.REGULAR: EntryKind.FILE,
    FileType.SYMLINK: EntryKind.SYMLINK,
    FileType.CHAR: EntryKind.CHAR,
    FileType.BLOCK: EntryKind.BLOCK,
    FileType.FIFO: EntryKind.FIFO,
}

Xattrs = tuple[tuple[str, bytes], ...]


def file_header(
    ftype: FileType,
    mode: int,
    uid: int,
    gid: int,
    size: int = 0,
    rdev: int = 0,
    target: bytes = b"",
    xattrs: Xattrs = (),
) -> bytes:
    """The canonical header of a file object (see the module docstring)."""
    fixed = _FIXED.pack(FILE_MAGIC, ftype, mode & 0o7777, uid, gid, size, rdev)
    if not target and not xattrs:
        return fixed + b"\x00\x00\x00\x00\x00\x00\x00\x00"
    parts = [fixed, _U32.pack(len(target)), target, _U32.pack(len(xattrs))]
    for name, value in sorted(xattrs):
        raw = name.encode("utf-8", "surrogateescape")
        parts += [_U32.pack(len(raw)), raw, _U32.pack(len(value)), value]
    return b"".join(parts)


def file_id(header: bytes, content: bytes = b"") -> str:
    h = hashlib.sha256(header)
    if content:
        h.update(content)
    return h.hexdigest()


def list_names(path: str | os.PathLike[str]) -> list[str]:
    """The names in a directory, unsorted (os.scandir: no stat per entry)."""
    with os.scandir(path) as it:
        return [entry.name for entry in it]


def is_object_id(text: str) -> bool:
    return len(text) == ID_LENGTH and _ID_RE.fullmatch(text) is not None


def object_relpath(oid: str, suffix: str) -> str:
    """Where an object lives, relative to ``objects/``."""
    return f"{oid[:2]}/{oid[2:]}.{suffix}"


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DirMeta:
    """A directory's own metadata (it lives in its parent's tree, or the commit)."""

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: Xattrs = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "gid": self.gid,
            "mode": self.mode & 0o7777,
            "uid": self.uid,
            "xattrs": {k: base64.b64encode(v).decode() for k, v in self.xattrs},
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> DirMeta:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: directory metadata is not an object")
        mode, uid, gid = data.get("mode"), data.get("uid"), data.get("gid")
        raw_xattrs = data.get("xattrs")
        if not raw_xattrs:
            # Most directories share a few plain metadata: make each once.
            key = (mode, uid, gid)
            known = _PLAIN_META.get(key)
            if known is not None:
                return known
        if not all(type(v) is int and v >= 0 for v in (mode, uid, gid)):
            raise ValueError(f"{where}: mode, uid and gid must be non-negative integers")
        if uid > MAX_ID or gid > MAX_ID:  # type: ignore[operator]
            # (uid_t)-1 cannot be given to chown: a checkout could not make it.
            raise ValueError(f"{where}: uid and gid must be at most {MAX_ID}")
        if not isinstance(raw_xattrs or {}, dict):
            raise ValueError(f"{where}: xattrs must be an object")
        xattrs = tuple(sorted((str(k), base64.b64decode(v)) for k, v in (raw_xattrs or {}).items()))
        meta = cls(int(mode) & 0o7777, int(uid), int(gid), xattrs)  # type: ignore[arg-type]
        if not xattrs and len(_PLAIN_META) < 1024 and mode == meta.mode:
            _PLAIN_META[(mode, uid, gid)] = meta
        return meta


_PLAIN_META: dict[tuple[Any, Any, Any], DirMeta] = {}


DEFAULT_DIR_META = DirMeta()


@dataclass(frozen=True)
class Tree:
    """A parsed tree object."""

    dirs: Mapping[str, tuple[str, DirMeta]]
    files: Mapping[str, str]


def encode_tree(dirs: Mapping[str, tuple[str, DirMeta]], files: Mapping[str, str]) -> bytes:
    return canonical_json(
        {
            "dirs": {name: {"tree": tid, **meta.to_json()} for name, (tid, meta) in dirs.items()},
            "files": dict(files),
        }
    )


_BAD_NAMES = frozenset({"", ".", ".."})
_HEX_RUN = re.compile(r"[0-9a-f]*")


def _check_names(names: Iterable[str], where: str) -> None:
    """Entry names must be single path components (checked in bulk: a tree
    can hold thousands)."""
    joined = "".join(names)
    if "/" in joined or "\x00" in joined or not _BAD_NAMES.isdisjoint(names):
        bad = next(n for n in names if n in _BAD_NAMES or "/" in n or "\x00" in n)
        raise ValueError(f"{where}: invalid entry name {bad!r}")


def decode_tree(data: bytes, where: str) -> Tree:
    """Parse a tree object; ValueError says what is wrong."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: not a JSON object")
    raw_dirs, files = doc.get("dirs"), doc.get("files")
    if not isinstance(raw_dirs, dict) or not isinstance(files, dict):
        raise ValueError(f"{where}: 'dirs' and 'files' must be objects")
    _check_names(files, where)
    try:
        ids = "".join(files.values())
    except TypeError:
        raise ValueError(f"{where}: file ids must be strings") from None
    if len(ids) != ID_LENGTH * len(files) or not _HEX_RUN.fullmatch(ids):
        bad = next(n for n, oid in files.items() if not is_object_id(oid))
        raise ValueError(f"{where}: file {bad!r} has no valid object id")
    dirs: dict[str, tuple[str, DirMeta]] = {}
    if raw_dirs:
        _check_names(raw_dirs, where)
        if not files.keys().isdisjoint(raw_dirs):
            both = next(n for n in raw_dirs if n in files)
            raise ValueError(f"{where}: {both!r} is both a file and a directory")
        from_json = DirMeta.from_json
        for name, entry in raw_dirs.items():
            tid = entry.get("tree") if isinstance(entry, dict) else None
            if type(tid) is not str or len(tid) != ID_LENGTH or not _HEX_RUN.fullmatch(tid):
                raise ValueError(f"{where}: directory {name!r} has no valid tree id")
            dirs[name] = (tid, from_json(entry, where))
    return Tree(dirs, files)


@dataclass(frozen=True)
class Commit:
    """A commit: one imported image, as a root tree plus where it came from."""

    id: str
    parent: str | None
    timestamp: int
    tree: str
    root: DirMeta
    image: str
    manifest_digest: str
    config_digest: str
    version: str | None
    subject: str
    diff_ids: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        return {
            "config_digest": self.config_digest,
            "diff_ids": list(self.diff_ids),
            "image": self.image,
            "manifest_digest": self.manifest_digest,
            "parent": self.parent,
            "root": self.root.to_json(),
            "subject": self.subject,
            "timestamp": self.timestamp,
            "tree": self.tree,
            "version": self.version,
        }

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.body()}


def encode_commit(
    *,
    parent: str | None,
    timestamp: int,
    tree: str,
    root: DirMeta,
    image: str,
    manifest_digest: str,
    config_digest: str,
    version: str | None,
    subject: str,
    diff_ids: Iterable[str],
) -> tuple[str, bytes]:
    """The id and canonical bytes of a commit."""
    draft = Commit(
        "",
        parent,
        timestamp,
        tree,
        root,
        image,
        manifest_digest,
        config_digest,
        version,
        subject,
        tuple(diff_ids),
    )
    data = canonical_json(draft.body())
    return content_id(data), data


def decode_commit(oid: str, data: bytes, where: str) -> Commit:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: not a JSON object")
    tree, parent = doc.get("tree"), doc.get("parent")
    if not isinstance(tree, str) or not is_object_id(tree):
        raise ValueError(f"{where}: no valid root tree id")
    if parent is not None and (not isinstance(parent, str) or not is_object_id(parent)):
        raise ValueError(f"{where}: invalid parent id")
    timestamp = doc.get("timestamp")
    if not isinstance(timestamp, int):
        raise ValueError(f"{where}: timestamp must be an integer")
    version = doc.get("version")
    diff_ids = doc.get("diff_ids") or []
    if not isinstance(diff_ids, list):
        raise ValueError(f"{where}: diff_ids must be a list")
    return Commit(
        id=oid,
        parent=parent,
        timestamp=timestamp,
        tree=tree,
        root=DirMeta.from_json(doc.get("root"), f"{where}: root"),
        image=str(doc.get("image", "")),
        manifest_digest=str(doc.get("manifest_digest", "")),
        config_digest=str(doc.get("config_digest", "")),
        version=str(version) if version is not None else None,
        subject=str(doc.get("subject", "")),
        diff_ids=tuple(str(d) for d in diff_ids),
    )


def is_ref_name(name: str) -> bool:
    """A ref name is one or more '/'-separated components of letters, digits
    and ``._+@:-``; no component starts with '.' (so no '.', '..' or hidden
    temporary names)."""
    parts = name.split("/")
    return bool(name) and len(name) <= 1024 and all(_REF_COMPONENT.fullmatch(p) for p in parts)


def check_ref_name(name: str) -> str:
    """*name* if it is a ref name (see :func:`is_ref_name`)."""
    if not is_ref_name(name):
        raise InvalidInputError(
            f"invalid ref name {name!r}",
            hint="use '/'-separated words of letters, digits and ._+@:- "
            "(not starting with '.'), e.g. images/default",
        )
    return name


def check_object_id(text: str, what: str = "commit") -> str:
    if not is_object_id(text):
        raise InvalidInputError(f"invalid {what} id {text!r}: expected 64 lowercase hex digits")
    return text
