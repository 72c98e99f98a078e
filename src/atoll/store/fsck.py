"""Checking the store: every object against its id, every reference against
what exists.

File objects are re-hashed from what the file system holds now: content,
type, mode, owner, xattrs and symlink target.  A deployment file is a hardlink
to its object, so ``chmod`` or an edit in place through a deployment changes the
object too; fsck finds that.  Trees and commits must hash to their ids, parse,
and name objects that exist; refs must name commits that exist.

Objects that nothing references (left by an interrupted import) are not
problems: gc removes them.  Neither are the objects missing from a commit
marked *partial*: that is what a repair leaves, and the next import of the
commit's image fetches them again.

Layer-chain records must parse, carry their own chain id and reach only
objects that are there and sound; a record that reaches a corrupt object is
*affected* (the object is the problem, as is a missing object that a commit
needs), one that is not valid or reaches another missing object is a problem
of kind ``chain``.  Imports ignore such records.  A layer record
(:mod:`atoll.store.layerrecords`) that does not parse is a problem of kind
``layer``; one naming objects that are gone is not (gc may remove them, and
an import then reads the layer).

Repair removes corrupt objects (and files that are no objects at all) and
marks every commit that reaches a removed or missing object as partial; it
removes the chain records that are affected or problems, and the layer records
that are problems.  A
commit object that is itself corrupt is removed; the refs naming it are
reported, since only the user knows which image to import again.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.fsutil import TMP_PREFIX
from atoll.store.chains import chains_dir, decode_chain_record, record_names
from atoll.store.format import (
    COMMIT_SUFFIX,
    FILE_SUFFIX,
    TREE_SUFFIX,
    content_id,
    decode_commit,
    decode_tree,
    is_object_id,
    is_ref_name,
    list_names,
)
from atoll.store.layerrecords import decode_layer_record, layers_dir
from atoll.store.layerrecords import record_names as layer_record_names
from atoll.store.objects import rehash_file_object

if TYPE_CHECKING:
    from atoll.store.store import Store

_NAME = re.compile(r"([0-9a-f]{62})\.(file|tree|commit)")
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FsckProblem:
    #: The object id (or the ref name, for kind "ref"; the path, for "stray").
    object_id: str
    #: "file", "tree", "commit", "ref", "chain" (a layer-chain record), "layer"
    #: (a layer record) or "stray" (a file that is no object).
    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"object": self.object_id, "kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class FsckReport:
    objects_checked: int
    problems: tuple[FsckProblem, ...]
    #: Commits that reach a corrupt or missing object (or are corrupt themselves).
    commits_affected: tuple[str, ...]
    #: Refs naming an affected commit or a commit that does not exist.
    refs_affected: tuple[str, ...]
    #: Commits marked partial after this run (repairs included).
    partial_commits: tuple[str, ...]
    repaired: bool
    #: Objects removed by the repair.
    removed: tuple[str, ...] = field(default=())
    #: Layer-chain records (by chain id) that are invalid or reach missing or
    #: corrupt objects; the repair removes them.
    chains_affected: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "objectsChecked": self.objects_checked,
            "problems": [p.to_json() for p in self.problems],
            "commitsAffected": list(self.commits_affected),
            "refsAffected": list(self.refs_affected),
            "partialCommits": list(self.partial_commits),
            "repaired": self.repaired,
            "removed": list(self.removed),
            "chainsAffected": list(self.chains_affected),
        }


class _Checker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.problems: list[FsckProblem] = []
        self.files: set[str] = set()
        self.trees: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        self.commits: dict[str, str] = {}  # commit id -> root tree id
        self.bad_commits: set[str] = set()
        self.corrupt: dict[str, str] = {}  # relpath -> id (or path) of what to remove
        self.checked = 0

    def scan(self) -> None:
        objects = self.store.objects
        for fan in sorted(list_names(objects)):
            folder = objects / fan
            if len(fan) != 2 or not folder.is_dir():
                self._stray(f"objects/{fan}")
                continue
            for name in sorted(list_names(folder)):
                match = _NAME.fullmatch(name)
                if match is None:
                    self._stray(f"objects/{fan}/{name}")
                    continue
                oid, suffix = fan + match.group(1), match.group(2)
                self.checked += 1
                path = str(folder / name)
                if suffix == FILE_SUFFIX:
                    self._file(oid, path)
                elif suffix == TREE_SUFFIX:
                    self._tree(oid, path)
                else:
                    self._commit(oid, path)

    def _stray(self, rel: str) -> None:
        self.problems.append(FsckProblem(rel, "stray", "not an object; it does not belong here"))
        self.corrupt[rel] = rel

    def _bad(self, oid: str, suffix: str, message: str) -> None:
        self.problems.append(FsckProblem(oid, suffix, message))
        self.corrupt[f"objects/{oid[:2]}/{oid[2:]}.{suffix}"] = oid

    def _file(self, oid: str, path: str) -> None:
        try:
            actual, _ = rehash_file_object(path)
        except (OSError, ValueError) as exc:
            self._bad(oid, FILE_SUFFIX, f"cannot be read: {exc}")
            return
        if actual != oid:
            self._bad(
                oid,
                FILE_SUFFIX,
                "does not match its id: its content, mode, owner or xattrs changed "
                "(a deployment file edited in place?)",
            )
            return
        self.files.add(oid)

    def _tree(self, oid: str, path: str) -> None:
        try:
            data = Path(path).read_bytes()
            if content_id(data) != oid:
                raise ValueError("does not match its id")
            tree = decode_tree(data, "tree")
        except (OSError, ValueError) as exc:
            self._bad(oid, TREE_SUFFIX, str(exc).removeprefix("tree: "))
            return
        self.trees[oid] = (
            {name: tid for name, (tid, _meta) in tree.dirs.items()},
            dict(tree.files),
        )

    def _commit(self, oid: str, path: str) -> None:
        try:
            data = Path(path).read_bytes()
            if content_id(data) != oid:
                raise ValueError("does not match its id")
            commit = decode_commit(oid, data, "commit")
        except (OSError, ValueError) as exc:
            self._bad(oid, COMMIT_SUFFIX, str(exc).removeprefix("commit: "))
            self.bad_commits.add(oid)
            return
        self.commits[oid] = commit.tree

    def bad_below(self, tid: str, memo: dict[str, frozenset[str]]) -> frozenset[str]:
        """Ids of missing or corrupt objects reachable from tree *tid*."""
        known = memo.get(tid)
        if known is not None:
            return known
        entry = self.trees.get(tid)
        if entry is None:
            memo[tid] = result = frozenset({tid})
            return result
        dirs, files = entry
        bad: set[str] = {oid for oid in files.values() if oid not in self.files}
        for sub in dirs.values():
            bad |= self.bad_below(sub, memo)
        memo[tid] = result = frozenset(bad) if bad else _EMPTY
        return result


def fsck(store: Store, *, repair: bool = False) -> FsckReport:
    with store.lock(shared=not repair):
        checker = _Checker(store)
        checker.scan()
        partial = set(store.partial_commits())
        memo: dict[str, frozenset[str]] = {}
        corrupt_ids = set(checker.corrupt.values())
        affected: set[str] = set(checker.bad_commits)
        for cid, tree in sorted(checker.commits.items()):
            bad = checker.bad_below(tree, memo)
            if not bad:
                continue
            broken = bad & corrupt_ids
            missing = bad - corrupt_ids
            if missing and cid not in partial:
                for oid in sorted(missing):
                    checker.problems.append(
                        FsckProblem(oid, "missing", f"missing, and commit {cid} needs it")
                    )
            if broken or (missing and cid not in partial):
                affected.add(cid)
        refs_affected = []
        for name, cid in store.refs().items():
            if not is_ref_name(name):
                checker.problems.append(FsckProblem(name, "ref", "is not a valid ref name"))
                refs_affected.append(name)
            elif not is_object_id(cid):
                checker.problems.append(FsckProblem(name, "ref", "does not hold a commit id"))
                refs_affected.append(name)
            elif cid in affected:
                refs_affected.append(name)
            elif cid not in checker.commits:
                checker.problems.append(
                    FsckProblem(name, "ref", f"names commit {cid}, which is not in the store")
                )
                refs_affected.append(name)
        chains_affected = _check_chains(store, checker, memo, corrupt_ids)
        bad_layers = _check_layer_records(store, checker)
        removed: list[str] = []
        if repair:
            for name in bad_layers:
                (layers_dir(store.path) / name).unlink(missing_ok=True)
            folder = chains_dir(store.path)
            for name in chains_affected:
                (folder / name).unlink(missing_ok=True)
            for rel, oid in sorted(checker.corrupt.items()):
                target = store.path / rel
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
                removed.append(oid)
            for cid in sorted(affected):
                if cid in checker.commits:
                    store.mark_partial(cid)
        affected_set = affected
        commits_affected = tuple(sorted(affected_set))
        return FsckReport(
            objects_checked=checker.checked,
            problems=tuple(checker.problems),
            commits_affected=commits_affected,
            refs_affected=tuple(sorted(set(refs_affected))),
            partial_commits=tuple(store.partial_commits()),
            repaired=repair,
            removed=tuple(removed),
            chains_affected=tuple(chains_affected),
        )


def _check_layer_records(store: Store, checker: _Checker) -> list[str]:
    """The layer records that do not parse; a problem added for each."""
    bad = []
    for name in layer_record_names(store.path):
        if name.startswith(TMP_PREFIX):
            continue  # a write that died; gc removes it
        try:
            if not is_object_id(name):
                raise ValueError("not a layer record name")
            decode_layer_record(name, (layers_dir(store.path) / name).read_bytes())
        except (OSError, ValueError) as exc:
            checker.problems.append(FsckProblem(name, "layer", f"invalid record: {exc}"))
            bad.append(name)
    return bad


def _check_chains(
    store: Store, checker: _Checker, memo: dict[str, frozenset[str]], corrupt_ids: set[str]
) -> list[str]:
    """The chain records that imports would not use; problems added for those
    not explained by a corrupt object."""
    affected = []
    reported = {p.object_id for p in checker.problems if p.kind == "missing"}
    for name in record_names(store.path):
        if name.startswith(TMP_PREFIX):
            continue  # a write that died; gc removes it
        try:
            if not is_object_id(name):
                raise ValueError("not a layer-chain record name")
            record = decode_chain_record(name, (chains_dir(store.path) / name).read_bytes())
        except (OSError, ValueError) as exc:
            checker.problems.append(FsckProblem(name, "chain", f"invalid record: {exc}"))
            affected.append(name)
            continue
        bad = checker.bad_below(record.tree, memo)
        if not bad:
            continue
        affected.append(name)
        missing = bad - corrupt_ids - reported
        if missing:
            checker.problems.append(
                FsckProblem(
                    name,
                    "chain",
                    f"names tree {record.tree}, which lacks {len(missing)} objects "
                    f"(e.g. {min(missing)}); imports ignore the record",
                )
            )
    return affected
