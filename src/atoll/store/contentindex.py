"""Finding a regular file in the store by the sha256 of its contents.

A file object's id covers its metadata too (see :mod:`atoll.store.format`), so
a layer's table of contents, which names each file by the sha256 of its
contents, cannot be looked up by id.  This index maps one to the other, one
file per commit (format version :data:`INDEX_VERSION`)::

    STORE/state/content/<commit id>     text, sorted, one line per regular file
                                        object with contents the commit reaches:
        atoll-content-index 1
        <sha256 hex of the contents> <file object id>
        …

It is a cache: written atomically when a partial pull first needs it, built
from the commit's trees (an object already indexed for another commit is not
read again), ignored when its commit is gone.  Nothing trusts it: a reader
hashes the object's contents as it copies them and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from atoll.errors import StoreCorruptError
from atoll.fsutil import write_atomic
from atoll.store.format import FILE_SUFFIX, STATE_DIR, is_object_id

if TYPE_CHECKING:
    from atoll.store.store import Store

INDEX_VERSION = 1
INDEX_DIR = "content"
_MAGIC = f"atoll-content-index {INDEX_VERSION}"
_READ = 1 << 20


def _index_dir(store: Store) -> Path:
    return store.path / STATE_DIR / INDEX_DIR


def _read_index(path: Path) -> dict[str, str] | None:
    """sha256 -> object id, or None when the file is missing or not an index."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0] != _MAGIC:
        return None
    out: dict[str, str] = {}
    for line in lines[1:]:
        sha, _, oid = line.partition(" ")
        if len(sha) != 64 or not is_object_id(oid):
            return None
        out[sha] = oid
    return out


def _regular_oids(store: Store, commit_id: str) -> Iterator[str]:
    seen: set[str] = set()
    pending = [store.commit(commit_id).tree]
    while pending:
        tree = store.tree(pending.pop())
        pending.extend(sub for sub, _ in tree.dirs.values())
        for oid in tree.files.values():
            if oid not in seen:
                seen.add(oid)
                yield oid


def hash_object(path: Path) -> str | None:
    """The sha256 of a regular, non-empty file object's contents (None otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, _READ):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


class ContentIndex:
    """sha256 of contents -> a file object holding them, over the store's commits."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.by_sha: dict[str, str] = {}

    @classmethod
    def load(cls, store: Store) -> ContentIndex:
        """Index every commit of *store* (writing the indexes it lacks)."""
        index = cls(store)
        folder = _index_dir(store)
        commits = store.commit_ids()
        missing = []
        for commit_id in commits:
            known = _read_index(folder / commit_id)
            if known is None:
                missing.append(commit_id)
            else:
                index.by_sha.update(known)
        by_oid = {oid: sha for sha, oid in index.by_sha.items()}
        for commit_id in missing:
            entries: dict[str, str] = {}
            try:
                for oid in _regular_oids(store, commit_id):
                    sha = by_oid.get(oid)
                    if sha is None:
                        sha = hash_object(store.object_path(oid, FILE_SUFFIX))
                        if sha is None:
                            continue
                        by_oid[oid] = sha
                    entries[sha] = oid
            except StoreCorruptError:
                # A commit with missing trees (see fsck) only lends fewer files.
                index.by_sha.update(entries)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            text = "".join(f"{sha} {oid}\n" for sha, oid in sorted(entries.items()))
            write_atomic(folder / commit_id, f"{_MAGIC}\n{text}".encode(), durable=False)
            index.by_sha.update(entries)
        return index

    def path(self, sha256: str) -> Path | None:
        """A file object with these contents, if the store has one."""
        oid = self.by_sha.get(sha256)
        if oid is None:
            return None
        path = self.store.object_path(oid, FILE_SUFFIX)
        return path if path.exists() else None


def read_verified(path: Path, sha256: str, size: int) -> Iterator[bytes]:
    """The contents of *path* in pieces, refused at the end unless they are
    *size* bytes with this sha256 (a store object changed behind our back)."""
    digest = hashlib.sha256()
    count = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            digest.update(chunk)
            count += len(chunk)
            yield chunk
    if count != size or digest.hexdigest() != sha256:
        raise StoreCorruptError(
            f"{path}: the object's contents are not the sha256:{sha256} the index says",
            hint="run atoll store fsck --repair",
        )
