"""Garbage collection: remove what no kept commit reaches.

Kept are the commits named by a ref and those the caller passes (the sysroot
passes the commits of its deployments, pinned ones included).  Parents are
not followed: a commit's parent stays only if something keeps it too.
Everything a kept commit reaches stays; every other object goes, along with
staging directories of imports that died, and the import and partial records
of removed commits.

Layer-chain records (see :mod:`atoll.store.format`) are roots too, but only
while a kept commit's layers start with their chain: the record of an OS
image's base layers lives as long as some kept image is built on them, and
goes (with the trees only it reached) when the last one does.  Records are
removed before any object, so no record ever names an object gc removed.
Layer records (:mod:`atoll.store.layerrecords`) stay while a kept commit has
their layer; they keep no object alive (an import checks that every object a
record names is there before using it).

gc holds the store's exclusive lock, which imports hold for their whole run
and checkouts share: it never runs beside either.  Objects are removed
commits first, then trees, then files, so an interrupted gc never leaves a
commit whose objects it removed; what it did not get to, the next gc removes.
A kept commit whose tree is missing or corrupt (a partial commit) keeps what
can still be reached from it.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atoll.errors import StoreCorruptError
from atoll.faults import crashpoint
from atoll.fsutil import fsync_dir
from atoll.store.chains import chain_ids, chains_dir, read_chain_record, record_names
from atoll.store.format import (
    COMMIT_SUFFIX,
    FILE_SUFFIX,
    MANIFESTS_DIR,
    PARTIAL_DIR,
    STATE_DIR,
    TREE_SUFFIX,
    check_object_id,
    is_object_id,
    list_names,
)
from atoll.store.layerrecords import prune_layer_records
from atoll.store.tocs import prune_tocs

if TYPE_CHECKING:
    from atoll.store.store import Store


@dataclass(frozen=True)
class GcReport:
    commits_kept: int
    commits_removed: int
    objects_removed: int
    #: Disk space given back: objects whose last link was the store's.
    bytes_freed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "commitsKept": self.commits_kept,
            "commitsRemoved": self.commits_removed,
            "objectsRemoved": self.objects_removed,
            "bytesFreed": self.bytes_freed,
        }


def gc(store: Store, keep: Iterable[str] = ()) -> GcReport:
    wanted = {check_object_id(c) for c in keep}
    with store.lock():
        store.remove_stale_staging()
        roots = {c for c in (*store.refs().values(), *wanted) if store.has_commit(c)}
        trees: set[str] = set()
        files: set[str] = set()
        chains: set[str] = set()
        diff_ids: set[str] = set()
        for cid in roots:
            try:
                commit = store.commit(cid)
                _mark(store, commit.tree, trees, files)
            except StoreCorruptError:
                continue
            chains.update(chain_ids(commit.diff_ids))
            diff_ids.update(commit.diff_ids)
        _keep_chain_records(store, chains, trees, files)
        prune_layer_records(store.path, diff_ids)
        prune_tocs(store.path, diff_ids)
        crashpoint("store-gc-marked")
        live = {COMMIT_SUFFIX: roots, TREE_SUFFIX: trees, FILE_SUFFIX: files}
        removed = freed = commits_removed = 0
        for suffix in (COMMIT_SUFFIX, TREE_SUFFIX, FILE_SUFFIX):
            n, nbytes = _sweep(store, suffix, live[suffix])
            removed += n
            freed += nbytes
            if suffix == COMMIT_SUFFIX:
                commits_removed = n
        _prune_records(store, roots)
    return GcReport(len(roots), commits_removed, removed, freed)


def _mark(store: Store, tid: str, trees: set[str], files: set[str]) -> None:
    stack = [tid]
    while stack:
        current = stack.pop()
        if current in trees:
            continue
        trees.add(current)
        try:
            tree = store.tree(current)
        except StoreCorruptError:
            continue
        files.update(tree.files.values())
        stack.extend(sub for sub, _meta in tree.dirs.values() if sub not in trees)


def _keep_chain_records(store: Store, chains: set[str], trees: set[str], files: set[str]) -> None:
    """Mark what the records of *chains* reach; remove every other record
    (and temporary files of writes that died)."""
    folder = chains_dir(store.path)
    removed = False
    for name in record_names(store.path):
        record = read_chain_record(store.path, name) if name in chains else None
        if record is None:
            (folder / name).unlink(missing_ok=True)
            removed = True
            continue
        _mark(store, record.tree, trees, files)
    if removed:
        # Gone for good before the objects they named are.
        fsync_dir(folder)


def _sweep(store: Store, suffix: str, live: set[str]) -> tuple[int, int]:
    ending = f".{suffix}"
    removed = freed = 0
    for fan in sorted(list_names(store.objects)):
        folder = store.objects / fan
        try:
            names = list_names(folder)
        except NotADirectoryError:
            continue
        for name in names:
            if not name.endswith(ending) or fan + name[: -len(ending)] in live:
                continue
            path = folder / name
            try:
                st = path.lstat()
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            if st.st_nlink == 1 and not stat.S_ISDIR(st.st_mode):
                freed += st.st_blocks * 512
    return removed, freed


def _prune_records(store: Store, live_commits: set[str]) -> None:
    partial = store.path / STATE_DIR / PARTIAL_DIR
    for name in list_names(partial) if partial.is_dir() else ():
        if name not in live_commits:
            (partial / name).unlink(missing_ok=True)
    manifests = store.path / STATE_DIR / MANIFESTS_DIR
    for name in list_names(manifests) if manifests.is_dir() else ():
        path = manifests / name
        try:
            cid = path.read_text().strip()
        except OSError:
            continue
        if not is_object_id(cid) or not store.has_commit(cid):
            path.unlink(missing_ok=True)
