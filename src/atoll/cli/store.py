"""``atoll store …``: list, check and clean an object store.

``--store DIR`` names the store directory itself.  When that is a sysroot's
store (``SYSROOT/atoll/store``), gc and fsck run under the sysroot lock and
treat every deployment as a root (see :mod:`atoll.sysroot.roots`).  ``--json`` output is the
``to_json()`` of :class:`~atoll.store.CommitListing` (a list), of
:class:`~atoll.store.FsckReport` and of :class:`~atoll.store.GcReport`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import Output, add_global_options
from atoll.errors import StoreCorruptError
from atoll.store import CommitListing, FsckReport, GcReport, Store
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.roots import fsck_sysroot_store, gc_sysroot_store, owning_sysroot
from atoll.timeutil import human_time


def register(commands: argparse._SubParsersAction[Any]) -> None:
    store = commands.add_parser("store", help="list, check and clean the object store")
    sub = store.add_subparsers(dest="store_command", metavar="COMMAND")
    sub.required = True

    ls = sub.add_parser("ls", help="list the store's commits and the refs naming them")
    add_store_options(ls)
    ls.set_defaults(func=_ls)

    fsck = sub.add_parser(
        "fsck",
        help="check every object against its id; exit 34 if something is wrong",
        description="Re-hash every object (content, mode, owner, xattrs) and check that "
        "trees, commits and refs name objects that exist.",
    )
    add_store_options(fsck)
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="remove corrupt objects and mark the commits needing them as partial "
        "(the next import of their image fetches them again)",
    )
    fsck.set_defaults(func=_fsck)

    gc = sub.add_parser(
        "gc", help="remove objects no ref reaches (in a sysroot's store: no deployment either)"
    )
    add_store_options(gc)
    gc.set_defaults(func=_gc)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    add_global_options(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", metavar="DIR", help="the object store directory")
    where.add_argument(
        "--sysroot",
        metavar="DIR",
        help="the store of this sysroot (default /sysroot, when --store is not given)",
    )


def store_path(args: argparse.Namespace) -> Path:
    """The store the command works on: ``--store``, else the sysroot's."""
    if getattr(args, "store", None):
        return Path(args.store)
    return Sysroot(Path(getattr(args, "sysroot", None) or "/sysroot")).store_path


def describe_listing(listing: list[CommitListing]) -> str:
    if not listing:
        return "the store holds no commits"
    rows = [("COMMIT", "REFS", "VERSION", "CREATED (UTC)", "IMAGE")]
    for item in listing:
        commit = item.commit
        rows.append(
            (
                commit.id[:12] + (" (partial)" if item.partial else ""),
                ", ".join(item.refs) or "-",
                commit.version or "-",
                human_time(commit.timestamp, seconds=True),
                commit.image,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def describe_fsck(report: FsckReport) -> str:
    if report.ok and not report.partial_commits:
        return f"checked {report.objects_checked} objects: no problems"
    lines = [f"checked {report.objects_checked} objects: {len(report.problems)} problems"]
    lines += [f"  {p.kind} {p.object_id}: {p.message}" for p in report.problems]
    if report.commits_affected:
        lines.append(f"commits affected: {', '.join(c[:12] for c in report.commits_affected)}")
    if report.refs_affected:
        lines.append(f"refs affected: {', '.join(report.refs_affected)}")
    if report.repaired:
        lines.append(f"repaired: removed {len(report.removed)} objects")
    if report.partial_commits:
        lines.append(
            "partial commits (import their images again to complete them): "
            + ", ".join(c[:12] for c in report.partial_commits)
        )
    return "\n".join(lines)


def describe_gc(report: GcReport) -> str:
    return (
        f"removed {report.objects_removed} objects ({report.commits_removed} commits), "
        f"{report.bytes_freed / 2**20:.1f} MiB freed; kept {report.commits_kept} commits"
    )


def _ls(args: argparse.Namespace, out: Output) -> int:
    listing = Store.open(store_path(args)).ls()
    out.result([item.to_json() for item in listing], describe_listing(listing))
    return 0


def _fsck(args: argparse.Namespace, out: Output) -> int:
    path = store_path(args)
    sysroot = owning_sysroot(path)
    if sysroot is not None:
        report = fsck_sysroot_store(sysroot, repair=args.repair)
    else:
        report = Store.open(path).fsck(repair=args.repair)
    out.result(report.to_json(), describe_fsck(report))
    if not report.ok and not report.repaired:
        raise StoreCorruptError(
            f"the object store {path} has {len(report.problems)} problems",
            hint="atoll store fsck --repair removes what is corrupt; "
            "importing the affected images again restores it",
        )
    return 0


def _gc(args: argparse.Namespace, out: Output) -> int:
    path = store_path(args)
    sysroot = owning_sysroot(path)
    # A sysroot's store: its deployments are roots, whatever refs it has.
    report = gc_sysroot_store(sysroot) if sysroot is not None else Store.open(path).gc()
    out.result(report.to_json(), describe_gc(report))
    return 0
