"""What an image must hold to be deployed: one rule for install, switch and upgrade.

Staging checks everything finalization will need, so that an update staging
accepts can be finalized: the new commit has /usr as a directory, /etc and
/var are directories when it has them (a symlink there would make atoll write
the merged /etc or the shared /var through it), and every tree and file of the
commit is in the store; and the pristine /etc of the deployment the update
starts from, which the three-way merge reads, is complete too (a store repair
may have removed part of it).
"""

from __future__ import annotations

import os

from atoll.errors import ImageLayoutError, StoreCorruptError
from atoll.store import EntryKind, Store
from atoll.store.format import FILE_SUFFIX

#: Top-level paths that must be real directories when present, and must be present.
_DIRS_IF_PRESENT = ("etc", "var")
_DIRS_REQUIRED = ("usr",)


def check_deployable(store: Store, commit: str, image: str) -> None:
    """Refuse an image *commit* that a deployment cannot be made of."""
    for name in (*_DIRS_REQUIRED, *_DIRS_IF_PRESENT):
        entry = store.lookup(commit, name)
        if entry is None:
            if name in _DIRS_REQUIRED:
                raise ImageLayoutError(
                    f"{image}: the image has no /{name}",
                    hint="an OS image keeps its operating system in /usr",
                )
            continue
        if entry.kind is not EntryKind.DIR:
            raise ImageLayoutError(
                f"{image}: /{name} is a {entry.kind.value}, not a directory",
                hint=f"make /{name} a real directory in the image (a symlink there "
                "cannot be merged or shared between deployments)",
            )
    check_complete(store, commit, "", f"image {image}")


def check_complete(store: Store, commit: str, subpath: str, what: str) -> None:
    """Every tree and file below *subpath* of *commit* is in the store (a
    missing *subpath* is nothing to check)."""
    top = store.lookup(commit, subpath) if subpath else None
    if subpath and (top is None or top.kind is not EntryKind.DIR):
        return
    pending = {top.object_id if top is not None else store.commit(commit).tree}
    seen: set[str] = set()
    # Plain strings and lexists: a Path per file costs more than the stat.
    objects = str(store.objects)
    while pending:
        tid = pending.pop()
        seen.add(tid)
        try:
            tree = store.tree(tid)
        except StoreCorruptError as exc:
            raise _incomplete(store, commit, subpath, what, str(exc)) from None
        files = tree.files.items()
        absent = sorted(
            name
            for name, oid in files
            if not os.path.lexists(f"{objects}/{oid[:2]}/{oid[2:]}.{FILE_SUFFIX}")
        )
        if absent:
            why = f"tree {tid} names {len(absent)} missing files (e.g. {absent[0]})"
            raise _incomplete(store, commit, subpath, what, why)
        pending.update(sub for sub, _meta in tree.dirs.values() if sub not in seen)


def _incomplete(store: Store, commit: str, subpath: str, what: str, why: str) -> StoreCorruptError:
    where = f"/{subpath}" if subpath else "the tree"
    return StoreCorruptError(
        f"{what}: {where} of commit {commit} is incomplete in the object store {store.path}: {why}",
        hint="see atoll store fsck; importing that commit's image again restores it "
        "(atoll upgrade does, for the booted image, while its tag still names it)",
    )
