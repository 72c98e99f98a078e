"""Which package owns each file of a flattened image tree.

Debian family: ``var/lib/dpkg/status`` names the installed packages and the
source package each was built from, and ``var/lib/dpkg/info/PKG[:ARCH].list``
the paths each one installed (absolute, as dpkg wrote them: with a merged /usr,
``/bin/ls`` is found at ``usr/bin/ls`` by following the tree's own symlinks).
dpkg's own files about a package (``info/PKG.md5sums``, ``.postinst``, …)
change with it and belong to it.  Files are owned by the *source* package:
the binaries of one source are updated together.

Fedora family: the rpm database (``usr/lib/sysimage/rpm`` or ``var/lib/rpm``)
is read by the ``rpm`` program with ``--dbpath`` pointed at a copy of it;
without ``rpm`` here the rechunk stops with a clear error rather than grouping
the image as if no package owned anything.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from atoll.build.flattree import FlatTree
from atoll.build.imagetree import resolve_path
from atoll.errors import PackageDatabaseError, ToolMissingError
from atoll.run import find_tool, run

_DPKG_STATUS = "var/lib/dpkg/status"
_DPKG_INFO = "var/lib/dpkg/info/"
_RPM_DBS = ("usr/lib/sysimage/rpm", "var/lib/rpm")


class PackageFormat(StrEnum):
    DPKG = "dpkg"
    RPM = "rpm"
    NONE = "none"


@dataclass(frozen=True)
class Ownership:
    format: PackageFormat
    #: path -> package, for the non-directory paths a package owns (for dpkg:
    #: the source package of the binary package that installed the path)
    owners: dict[str, str] = field(default_factory=dict)
    #: Installed packages (also those owning no file); source packages for dpkg.
    packages: tuple[str, ...] = ()


def _resolve(tree: FlatTree, path: str) -> str | None:
    """*path* with the symlinks among its parent directories followed inside the tree."""

    def link(here: str) -> str | bool | None:
        entry = tree.entries.get(here)
        if entry is None:
            return False
        return entry.linkname if entry.kind == tarfile.SYMTYPE else None

    return resolve_path(path, link, follow_last=False)


def _claim(tree: FlatTree, owners: dict[str, str], path: str, package: str) -> None:
    found = _resolve(tree, path)
    entry = tree.entries.get(found) if found is not None else None
    if found is None or entry is None or entry.is_dir:
        return
    # A path two packages claim (diversions, replaced files): the first by name.
    if found not in owners or package < owners[found]:
        owners[found] = package


def _installed(status: str) -> dict[str, str]:
    """Installed package -> its source package (the package itself when it names none)."""
    packages: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key.strip()] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            # "Source: pam (1.5.2-6)": the version is the binary's business.
            source = fields.get("Source", "").split(" ", 1)[0] or fields["Package"]
            packages[fields["Package"]] = source
    return packages


def _dpkg(tree: FlatTree) -> Ownership:
    raw = tree.read(_DPKG_STATUS)
    if raw is None:
        raise PackageDatabaseError(f"{tree.name}: /{_DPKG_STATUS} is not a file")
    source_of = _installed(raw.decode(errors="replace"))
    owners: dict[str, str] = {}
    for path in sorted(tree.entries):
        if not path.startswith(_DPKG_INFO) or "/" in path[len(_DPKG_INFO) :]:
            continue
        name = path[len(_DPKG_INFO) :]
        package = name.rpartition(".")[0].split(":", 1)[0]
        if not package:
            continue
        # Binary packages built from one source are updated together (a security
        # fix to pam changes libpam0g, libpam-modules, …): they share a group.
        package = source_of.get(package, package)
        owners.setdefault(path, package)
        if not name.endswith(".list"):
            continue
        listing = tree.read(path) or b""
        for line in listing.decode(errors="surrogateescape").splitlines():
            _claim(tree, owners, line, package)
    return Ownership(PackageFormat.DPKG, owners, tuple(sorted(set(source_of.values()))))


def _rpm(tree: FlatTree, db: str) -> Ownership:
    try:
        rpm = find_tool("rpm", why=f"{tree.name} has an rpm database (/{db}) to group files by")
    except ToolMissingError as exc:
        raise PackageDatabaseError(
            f"{tree.name}: the image keeps its packages in an rpm database (/{db}), "
            "and rpm is not installed here to read it",
            hint="install it with: apt-get install rpm; or rechunk on a Fedora-family host",
        ) from exc
    with tempfile.TemporaryDirectory(dir=tree.scratch) as tmp:
        for path, entry in tree.entries.items():
            if path.startswith(db + "/") and entry.kind == tarfile.REGTYPE:
                target = Path(tmp, path[len(db) + 1 :])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tree.object_path(entry.blob), target)
        proc = run(
            [rpm, "--dbpath", tmp, "-qa", "--queryformat", "[%{NAME}\t%{FILENAMES}\n]"],
            check=False,
        )
    if proc.returncode != 0:
        raise PackageDatabaseError(
            f"{tree.name}: rpm cannot read the database /{db}: "
            + (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        )
    owners: dict[str, str] = {}
    packages: set[str] = set()
    for line in proc.stdout.decode(errors="surrogateescape").splitlines():
        package, _, path = line.partition("\t")
        packages.add(package)
        _claim(tree, owners, path, package)
    return Ownership(PackageFormat.RPM, owners, tuple(sorted(packages)))


def read_ownership(tree: FlatTree) -> Ownership:
    """The owners of the tree's files from its package database; no database: none."""
    if _DPKG_STATUS in tree.entries:
        return _dpkg(tree)
    for db in _RPM_DBS:
        entry = tree.entries.get(db)
        if entry is not None and entry.is_dir and any(p.startswith(db + "/") for p in tree.entries):
            return _rpm(tree, db)
    return Ownership(PackageFormat.NONE)
