"""Deployments as roots of the object store.

The store keeps what its refs name (see :mod:`atoll.store.gc`), so every
deployment has a ref, as ostree keeps ``ostree/B/S/N`` for each of its
deployments: gc keeps every deployment's commit — staged, booted, rollback,
pinned — whether it runs through the sysroot or on the store directory::

    STORE/refs/atoll/
    ├── deploy/STATEROOT/COMMIT.SERIAL   one per deployment, naming its commit
    └── importing                        the commit a stage imported and has
                                         not yet given a deployment ref

A deployment's ref is written before its directory is checked out and removed
after its directory is gone, so a deployment never exists without it.  The
``importing`` ref is written under the same hold of the store lock as the
import itself, so a gc waiting for that lock never sees the new commit
unreferenced; it goes once the deployment's ref is there.  A crash between
those steps leaves a ref that names no deployment: :func:`sync_refs`, run
under the sysroot lock before a lifecycle operation, removes it, and writes
the refs of deployments made before atoll kept them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from atoll.store import FsckReport, GcReport, Store
from atoll.store.fsck import FsckProblem
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.state import SysrootState

#: Every ref the sysroot owns starts with this.
REF_PREFIX = "atoll/"
#: The commit a stage imported, until its deployment ref exists.
IMPORTING_REF = "atoll/importing"


def deployment_ref(stateroot: str, ident: str) -> str:
    return f"{REF_PREFIX}deploy/{stateroot}/{ident}"


def sync_refs(store: Store, state: SysrootState) -> None:
    """Make the store's ``atoll/`` refs name exactly the sysroot's deployments.
    Call with the sysroot lock held.  A deployment whose commit is gone gets no
    ref (:func:`deployment_problems` reports it)."""
    wanted = {deployment_ref(d.stateroot, d.id): d.commit for d in state.deployments.values()}
    with store.lock():
        have = {n: c for n, c in store.refs().items() if n.startswith(REF_PREFIX)}
        for name, commit in sorted(wanted.items()):
            if have.get(name) != commit and store.has_commit(commit):
                store.set_ref(name, commit)
        for name in sorted(have.keys() - wanted.keys()):
            store.set_ref(name, None)


def deployment_problems(store: Store, state: SysrootState) -> list[FsckProblem]:
    """A problem for every deployment whose commit is not in the store."""
    return [
        FsckProblem(
            deployment_ref(d.stateroot, d.id),
            "deployment",
            f"deployment {d.stateroot}/{d.id} ({d.origin.image}) needs commit {d.commit}, "
            "which is not in the store",
        )
        for d in state.deployments.values()
        if not store.has_commit(d.commit)
    ]


def owning_sysroot(store_path: Path) -> Sysroot | None:
    """The sysroot whose store is at *store_path* (``SYSROOT/atoll/store``), if any."""
    real = Path(os.path.realpath(store_path))
    sysroot = Sysroot(real.parent.parent)
    if real.name == "store" and real == Path(os.path.realpath(sysroot.store_path)):
        return sysroot if sysroot.exists() else None
    return None


def gc_sysroot_store(sysroot: Sysroot) -> GcReport:
    """``atoll store gc`` on a sysroot's store: under the sysroot lock, with
    every deployment a root (refs brought up to date first)."""
    with sysroot.lock():
        state = SysrootState.load(sysroot)
        store = Store.open(sysroot.store_path)
        sync_refs(store, state)
        return store.gc({d.commit for d in state.deployments.values()})


def fsck_sysroot_store(sysroot: Sysroot, *, repair: bool = False) -> FsckReport:
    """``atoll store fsck`` on a sysroot's store: the store's own checks, and a
    problem naming each deployment whose commit is missing (with or without a
    ref: sysroots made before deployments had refs have none).  It writes no
    ref and takes no sysroot lock: a check runs beside anything."""
    state = SysrootState.load(sysroot)
    store = Store.open(sysroot.store_path)
    report = store.fsck(repair=repair)
    extra = deployment_problems(store, state)
    if not extra:
        return report
    # The deployment's own problem says more than its ref's "names a missing commit".
    named = {p.object_id for p in extra}
    problems = [p for p in report.problems if p.object_id not in named]
    return dataclasses.replace(report, problems=(*problems, *extra))
