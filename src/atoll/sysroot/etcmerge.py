"""The /etc three-way merge: carry the administrator's changes over to a new image.

When a device moves from deployment A (image 1) to deployment B (image 2), the
/etc of B is built from three trees, none of which is modified::

    old_image/   the pristine /etc of image 1 (checked out from the store)
    local/       the /etc of the running deployment, as edited on the device
    new_image/   the pristine /etc of image 2
        |
        v
    dest/        the merged /etc; must not exist; appears complete or not at all

ostree's /etc merge is the model.  First :func:`diff_etc` lists what the
administrator changed: it compares ``old_image`` with ``local`` entry by entry.
An entry is *changed* when its type, content (files), target (symlinks), mode,
uid, gid or extended attributes differ; mtime and atime never count.  Then the
new image's /etc is taken as the base and every local change is applied to it:

==========  ==================  ================  ===============================  ==========
old image   local               new image         merged /etc                      recorded
==========  ==================  ================  ===============================  ==========
X           X (unchanged)       any, or absent    the new image's, or absent       -
absent      X (added)           absent, or same   X                                added
                                type as X
X           Y (content, target  absent, or same   Y                                modified
            or type changed)    type as Y
X           X' (metadata only)  Z, same type      Z's content with X''s metadata   metadata
X           X' (metadata only)  absent            X'                               metadata
X           absent (deleted)    any, or absent    absent (a warning if the new     deleted
                                                  image changed X)
directory   directory           directory, or     merged entry by entry, below     metadata
                                absent                                             if changed
any, or     X changed, added,   a different type  a *type conflict*: the strategy  conflict
absent      or a directory      (file, directory  decides, below
            with changes in it  or symlink)
special     or special          or special        treated as absent, not created   warning
==========  ==================  ================  ===============================  ==========

Details that follow from the table:

* A locally added or modified directory keeps its local metadata; a directory
  the administrator did not touch itself takes the new image's metadata.  When
  the new image dropped a directory that has local changes inside, the directory
  is recreated with its local metadata, holding only the carried changes.  A
  locally added directory is merged with one the new image added at the same
  path: the local entries win, the new image's other entries are kept.
  ``diff_etc`` lists every entry of an added directory and only the top of a
  deleted one (as ``ostree admin config-diff`` does).
* Metadata (mode, uid, gid and all extended attributes) is carried as a whole,
  never field by field.  A metadata-only change (chmod, chown, setfattr) on a
  file whose content the new image changed gives the new content with the
  local metadata: the administrator asked for those permissions, not for the old
  content.  The same holds for a symlink whose owner changed and whose target
  the new image changed.
* A locally deleted entry stays deleted even when the new image changed it; a
  warning names it so the administrator can look at the new version.
* A type conflict exists where the administrator changed an entry (or
  something inside a directory) and the new image has a different type there:
  file, directory or symlink.  It is never silent.  ``keep-local`` (the default)
  keeps the local version whole; ``keep-new`` takes the new image's version
  whole and drops the local changes at and below that path; both record the
  conflict.  ``fail`` raises :class:`~atoll.errors.EtcMergeConflictError` naming
  every conflicting path, before anything is written.
* Special files (fifos, sockets, devices) do not belong in /etc: wherever they
  appear they are treated as absent, never created in the result, and one found
  in the local or new /etc gives a warning.  So a regular file that the
  administrator replaced by a fifo counts as deleted.
* Every file of the result is a new, independent copy (never a hardlink into
  the store or the inputs), because administrators edit /etc in place.  Modes,
  owners, extended attributes (including ACLs and file capabilities) and
  timestamps are copied; an attribute the destination file system refuses is
  skipped with a warning.  Copying owners needs root, as on a device.

``dest`` is built under a temporary sibling name with restrictive directory
modes (final modes are set last, deepest first), made durable with one
``syncfs`` of its file system, and renamed to ``dest``: on any failure, a full disk
included, nothing is left behind.  Paths in results are relative to the /etc
root, ``.`` being the root itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.errors import AtollError, EtcMergeConflictError, InvalidInputError, from_oserror
from atoll.fsutil import fsync_dir, remove_tree, syncfs, temp_sibling

ROOT = "."
CHUNK_SIZE = 1 << 20

#: setxattr errors that mean "this file system will not take this attribute".
_XATTR_SKIPPABLE = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.E2BIG}
)


class EtcChangeKind(StrEnum):
    MODIFIED = "modified"
    ADDED = "added"
    DELETED = "deleted"
    METADATA = "metadata"


class EtcFileType(StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"


class EtcMergeStrategy(StrEnum):
    FAIL = "fail"
    KEEP_LOCAL = "keep-local"
    KEEP_NEW = "keep-new"


class EtcConflictResolution(StrEnum):
    KEEP_LOCAL = "keep-local"
    KEEP_NEW = "keep-new"


@dataclass(frozen=True)
class EtcChange:
    """A local change relative to the image: *path* is relative to the /etc root."""

    path: str
    kind: EtcChangeKind

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcChange:
        return cls(str(data["path"]), EtcChangeKind(data["kind"]))


@dataclass(frozen=True)
class EtcConflict:
    path: str
    local_type: EtcFileType
    new_type: EtcFileType
    resolution: EtcConflictResolution

    def to_json(self) -> dict[str, str]:
        return {
            "path": self.path,
            "localType": self.local_type.value,
            "newType": self.new_type.value,
            "resolution": self.resolution.value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcConflict:
        return cls(
            str(data["path"]),
            EtcFileType(data["localType"]),
            EtcFileType(data["newType"]),
            EtcConflictResolution(data["resolution"]),
        )


@dataclass(frozen=True)
class EtcMergeWarning:
    path: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcMergeWarning:
        return cls(str(data["path"]), str(data["message"]))


@dataclass(frozen=True)
class EtcMergeResult:
    """What :func:`merge_etc` did: the local changes carried into the result,
    the type conflicts and how they were resolved, and warnings."""

    changes: tuple[EtcChange, ...] = ()
    conflicts: tuple[EtcConflict, ...] = ()
    warnings: tuple[EtcMergeWarning, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": [c.to_json() for c in self.changes],
            "conflicts": [c.to_json() for c in self.conflicts],
            "warnings": [w.to_json() for w in self.warnings],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcMergeResult:
        try:
            return cls(
                tuple(EtcChange.from_json(c) for c in data["changes"]),
                tuple(EtcConflict.from_json(c) for c in data["conflicts"]),
                tuple(EtcMergeWarning.from_json(w) for w in data["warnings"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed /etc merge result: {exc!r}") from exc


# --- reading the inputs ------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A file, directory or symlink of one input; *origin* names that input."""

    path: Path
    st: os.stat_result
    kind: EtcFileType
    origin: str


_KINDS = {stat.S_IFREG: EtcFileType.FILE, stat.S_IFDIR: EtcFileType.DIRECTORY}
_KINDS[stat.S_IFLNK] = EtcFileType.SYMLINK
_SPECIAL_NAMES = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}

_OLD = "the old image's /etc"
_LOCAL = "the local /etc"
_NEW = "the new image's /etc"


class _Warnings:
    """Warnings in the order met, each once (an input may be scanned twice)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], None] = {}

    def add(self, path: str, message: str) -> None:
        self._seen.setdefault((path, message), None)

    def result(self) -> tuple[EtcMergeWarning, ...]:
        return tuple(EtcMergeWarning(p, m) for p, m in self._seen)


def _join(rel: str, name: str) -> str:
    return name if rel == ROOT else f"{rel}/{name}"


def _scan(entry: _Entry, rel: str, warnings: _Warnings | None) -> dict[str, _Entry]:
    """The entries of directory *entry*, special files left out (and reported)."""
    found: dict[str, _Entry] = {}
    with os.scandir(entry.path) as it:
        for de in it:
            st = de.stat(follow_symlinks=False)
            kind = _KINDS.get(stat.S_IFMT(st.st_mode))
            if kind is None:
                if warnings is not None:
                    special = _SPECIAL_NAMES.get(stat.S_IFMT(st.st_mode), "special file")
                    warnings.add(
                        _join(rel, de.name),
                        f"skipped a {special} in {entry.origin}: /etc holds only files, "
                        "directories and symlinks",
                    )
                continue
            found[de.name] = _Entry(Path(de.path), st, kind, entry.origin)
    return dict(sorted(found.items()))


def _root(path: Path, origin: str) -> _Entry:
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidInputError(f"{origin}, {path}, cannot be read: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"{origin}, {path}, is not a directory")
    return _Entry(path, st, EtcFileType.DIRECTORY, origin)


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    values: dict[str, bytes] = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since listxattr
                raise
    return values


def _readlink(path: Path) -> str:
    # Path.readlink() normalises the target ("a/" becomes "a"); the raw text counts.
    return os.readlink(path)  # noqa: PTH115


def _same_inode(a: _Entry, b: _Entry) -> bool:
    return (a.st.st_dev, a.st.st_ino) == (b.st.st_dev, b.st.st_ino)


def _same_metadata(a: _Entry, b: _Entry) -> bool:
    if _same_inode(a, b):
        return True
    if (a.st.st_uid, a.st.st_gid) != (b.st.st_uid, b.st.st_gid):
        return False
    # A symlink's mode is always 0777 on Linux and cannot be changed.
    if a.kind is not EtcFileType.SYMLINK and stat.S_IMODE(a.st.st_mode) != stat.S_IMODE(
        b.st.st_mode
    ):
        return False
    return _xattrs(a.path) == _xattrs(b.path)


def _same_content(a: _Entry, b: _Entry) -> bool:
    """Content of two files or targets of two symlinks of the same kind."""
    if _same_inode(a, b):
        return True
    if a.kind is EtcFileType.SYMLINK:
        return _readlink(a.path) == _readlink(b.path)
    if a.st.st_size != b.st.st_size:
        return False
    with a.path.open("rb", buffering=0) as fa, b.path.open("rb", buffering=0) as fb:
        while True:
            chunk = fa.read(CHUNK_SIZE)
            if chunk != fb.read(CHUNK_SIZE):
                return False
            if not chunk:
                return True


def _same_tree(a: _Entry, b: _Entry, rel: str) -> bool:
    if a.kind is not b.kind or not _same_metadata(a, b):
        return False
    if a.kind is not EtcFileType.DIRECTORY:
        return _same_content(a, b)
    ca, cb = _scan(a, rel, None), _scan(b, rel, None)
    if ca.keys() != cb.keys():
        return False
    return all(_same_tree(ca[name], cb[name], _join(rel, name)) for name in ca)


# --- the diff -----------------------------------------------------------------


def _diff(old: _Entry, local: _Entry, rel: str, out: list[EtcChange], warnings: _Warnings) -> None:
    old_children = _scan(old, rel, None)
    local_children = _scan(local, rel, warnings)
    for name in sorted(old_children.keys() | local_children.keys()):
        path = _join(rel, name)
        o, lo = old_children.get(name), local_children.get(name)
        if lo is None:
            out.append(EtcChange(path, EtcChangeKind.DELETED))
        elif o is None:
            _added(lo, path, out, warnings)
        elif o.kind is not lo.kind:
            out.append(EtcChange(path, EtcChangeKind.MODIFIED))
            if lo.kind is EtcFileType.DIRECTORY:
                for child_name, child in _scan(lo, path, warnings).items():
                    _added(child, _join(path, child_name), out, warnings)
        elif lo.kind is EtcFileType.DIRECTORY:
            if not _same_metadata(o, lo):
                out.append(EtcChange(path, EtcChangeKind.METADATA))
            _diff(o, lo, path, out, warnings)
        elif not _same_content(o, lo):
            out.append(EtcChange(path, EtcChangeKind.MODIFIED))
        elif not _same_metadata(o, lo):
            out.append(EtcChange(path, EtcChangeKind.METADATA))


def _added(entry: _Entry, rel: str, out: list[EtcChange], warnings: _Warnings) -> None:
    out.append(EtcChange(rel, EtcChangeKind.ADDED))
    if entry.kind is EtcFileType.DIRECTORY:
        for name, child in _scan(entry, rel, warnings).items():
            _added(child, _join(rel, name), out, warnings)


def _diff_roots(old: _Entry, local: _Entry, warnings: _Warnings) -> list[EtcChange]:
    changes: list[EtcChange] = []
    if not _same_metadata(old, local):
        changes.append(EtcChange(ROOT, EtcChangeKind.METADATA))
    _diff(old, local, ROOT, changes, warnings)
    return changes


def diff_etc(old_image: Path, local: Path) -> list[EtcChange]:
    """The administrator's changes: *local* compared with the image's /etc, in
    tree order.  Special files are ignored (see the module docstring)."""
    old, loc = _root(old_image, _OLD), _root(local, _LOCAL)
    try:
        return _diff_roots(old, loc, _Warnings())
    except OSError as exc:
        raise from_oserror(exc, _filename(exc) or str(local)) from exc


# --- the plan -----------------------------------------------------------------


@dataclass(frozen=True)
class _Copy:
    """Copy *src* (a whole tree if a directory) to *rel*."""

    rel: str
    src: _Entry


@dataclass(frozen=True)
class _Graft:
    """The content of *content* with the metadata of *meta* (same kind)."""

    rel: str
    content: _Entry
    meta: _Entry


@dataclass(frozen=True)
class _OpenDir:
    rel: str


@dataclass(frozen=True)
class _CloseDir:
    """Set the directory's metadata from *meta*; its entries are all written."""

    rel: str
    meta: _Entry


_Op = _Copy | _Graft | _OpenDir | _CloseDir


@dataclass(frozen=True)
class _Clash:
    path: str
    local: EtcFileType
    new: EtcFileType


@dataclass
class _Plan:
    changes: dict[str, EtcChange]
    strategy: EtcMergeStrategy
    warnings: _Warnings
    touched: set[str] = field(default_factory=set)
    ops: list[_Op] = field(default_factory=list)
    clashes: list[_Clash] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A path is touched when it or something below it changed locally.
        for path in self.changes:
            self.touched.add(ROOT)
            parts = path.split("/")
            self.touched.update("/".join(parts[: i + 1]) for i in range(len(parts)))

    def add(self, rel: str, o: _Entry | None, lo: _Entry | None, n: _Entry | None) -> None:
        if rel not in self.touched:
            if n is not None:
                self.ops.append(_Copy(rel, n))
            return
        change = self.changes.get(rel)
        if lo is None:  # deleted locally
            if n is not None and (o is None or not _same_tree(o, n, rel)):
                self.warnings.add(
                    rel, "deleted locally and changed in the new image; it stays deleted"
                )
            return
        if n is not None and n.kind is not lo.kind:
            self._conflict(rel, lo, n)
            return
        if lo.kind is EtcFileType.DIRECTORY:
            meta = lo if change is not None or n is None else n
            self.ops.append(_OpenDir(rel))
            old_children = _scan(o, rel, None) if o is not None and o.kind is lo.kind else {}
            local_children = _scan(lo, rel, None)  # the diff reported local special files
            new_children = _scan(n, rel, self.warnings) if n is not None else {}
            for name in sorted(old_children.keys() | local_children.keys() | new_children.keys()):
                self.add(
                    _join(rel, name),
                    old_children.get(name),
                    local_children.get(name),
                    new_children.get(name),
                )
            self.ops.append(_CloseDir(rel, meta))
            return
        assert change is not None, rel  # a touched file or symlink changed itself
        if change.kind is EtcChangeKind.METADATA and n is not None:
            self.ops.append(_Graft(rel, n, lo))
        else:
            self.ops.append(_Copy(rel, lo))

    def _conflict(self, rel: str, lo: _Entry, n: _Entry) -> None:
        self.clashes.append(_Clash(rel, lo.kind, n.kind))
        if self.strategy is EtcMergeStrategy.KEEP_LOCAL:
            self.ops.append(_Copy(rel, lo))
        elif self.strategy is EtcMergeStrategy.KEEP_NEW:
            self.ops.append(_Copy(rel, n))

    def result(self) -> EtcMergeResult:
        if self.strategy is EtcMergeStrategy.KEEP_NEW:
            resolution = EtcConflictResolution.KEEP_NEW
            lost = [c.path for c in self.clashes]
        else:  # FAIL raised before this, when there were conflicts
            resolution = EtcConflictResolution.KEEP_LOCAL
            lost = []
        carried = tuple(
            c
            for c in self.changes.values()
            if not any(c.path == p or c.path.startswith(f"{p}/") for p in lost)
        )
        conflicts = tuple(EtcConflict(c.path, c.local, c.new, resolution) for c in self.clashes)
        return EtcMergeResult(carried, conflicts, self.warnings.result())


# --- writing ------------------------------------------------------------------


class _Writer:
    """Carries out a plan under *tmp*; messages name the final path under *dest*."""

    def __init__(self, tmp: Path, dest: Path, warnings: _Warnings) -> None:
        self.tmp = tmp
        self.dest = dest
        self.warnings = warnings
        self.current = ROOT

    def run(self, ops: Sequence[_Op]) -> None:
        for op in ops:
            self.current = op.rel
            match op:
                case _OpenDir(rel):
                    (self.tmp / rel).mkdir(0o700)
                case _CloseDir(rel, meta):
                    self._finish(self.tmp / rel, rel, meta, meta)
                case _Copy(rel, src):
                    self._copy(src, rel)
                case _Graft(rel, content, meta):
                    self._write_leaf(content, meta, rel)

    def error(self, exc: OSError) -> AtollError:
        target = str(self.dest / self.current)
        name = _filename(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or not name or name.startswith(str(self.tmp)):
            return from_oserror(exc, target)
        return from_oserror(exc, name)

    def _copy(self, src: _Entry, rel: str) -> None:
        self.current = rel
        if src.kind is not EtcFileType.DIRECTORY:
            self._write_leaf(src, src, rel)
            return
        dst = self.tmp / rel
        # Private until finished: nobody may read a secret through a half-built tree.
        dst.mkdir(0o700)
        for name, child in _scan(src, rel, self.warnings).items():
            self._copy(child, _join(rel, name))
        self.current = rel
        self._finish(dst, rel, src, src)

    def _write_leaf(self, content: _Entry, meta: _Entry, rel: str) -> None:
        dst = self.tmp / rel
        if content.kind is EtcFileType.SYMLINK:
            dst.symlink_to(_readlink(content.path))
        else:
            shutil.copyfile(content.path, dst, follow_symlinks=False)
        self._finish(dst, rel, meta, content)

    def _finish(self, dst: Path, rel: str, meta: _Entry, times: _Entry) -> None:
        """Owner, then mode (chown clears setuid bits), then xattrs (chown clears
        file capabilities), then timestamps.  (Made durable all at once by the
        syncfs in :func:`merge_etc`: an fsync per file took seconds on a slow disk.)"""
        values = _xattrs(meta.path)
        ns = (times.st.st_atime_ns, times.st.st_mtime_ns)
        if meta.kind is EtcFileType.SYMLINK:
            os.chown(dst, meta.st.st_uid, meta.st.st_gid, follow_symlinks=False)
            for name, value in values.items():
                self._setxattr(dst, name, value, rel)
            os.utime(dst, ns=ns, follow_symlinks=False)
            return
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if meta.kind is EtcFileType.DIRECTORY:
            flags |= os.O_DIRECTORY
        fd = os.open(dst, flags)
        try:
            os.fchown(fd, meta.st.st_uid, meta.st.st_gid)
            os.fchmod(fd, stat.S_IMODE(meta.st.st_mode))
            for name, value in values.items():
                self._setxattr(fd, name, value, rel)
            os.utime(fd, ns=ns)
        finally:
            os.close(fd)

    def _setxattr(self, target: int | Path, name: str, value: bytes, rel: str) -> None:
        try:
            os.setxattr(target, name, value, follow_symlinks=isinstance(target, int))
        except OSError as exc:
            if exc.errno not in _XATTR_SKIPPABLE:
                raise
            self.warnings.add(rel, f"extended attribute {name} not copied: {exc.strerror}")


def _filename(exc: OSError) -> str | None:
    name = exc.filename
    if isinstance(name, str | bytes | os.PathLike):
        return os.fsdecode(name)
    return None


def _conflict_error(local: Path, clashes: Sequence[_Clash]) -> EtcMergeConflictError:
    listed = "; ".join(f"{c.path} (local {c.local}, new image {c.new})" for c in clashes)
    return EtcMergeConflictError(
        f"local changes in {local} conflict with the new image at {len(clashes)} path(s): {listed}",
        paths=[c.path for c in clashes],
        hint="make these paths match the new image's type by hand, "
        "or merge with the keep-local or keep-new strategy",
    )


def merge_etc(
    old_image: Path,
    local: Path,
    new_image: Path,
    dest: Path,
    *,
    strategy: EtcMergeStrategy = EtcMergeStrategy.KEEP_LOCAL,
) -> EtcMergeResult:
    """Build at *dest* (which must not exist) the new image's /etc with the local
    changes relative to the old image's /etc carried over.  See the module
    docstring for the rules; the inputs are never modified."""
    strategy = EtcMergeStrategy(strategy)
    old, loc, new = _root(old_image, _OLD), _root(local, _LOCAL), _root(new_image, _NEW)
    if os.path.lexists(dest):
        raise InvalidInputError(
            f"merge destination {dest} already exists", hint="remove it or choose another path"
        )
    target = dest.resolve()
    for root in (old_image, local, new_image):
        resolved = root.resolve()
        if target == resolved or resolved in target.parents:
            raise InvalidInputError(f"merge destination {dest} is inside the input {root}")

    warnings = _Warnings()
    try:
        changes = _diff_roots(old, loc, warnings)
        plan = _Plan({c.path: c for c in changes}, strategy, warnings)
        plan.add(ROOT, old, loc, new)
    except OSError as exc:
        raise from_oserror(exc, _filename(exc) or str(local)) from exc
    if plan.clashes and strategy is EtcMergeStrategy.FAIL:
        raise _conflict_error(local, plan.clashes)

    tmp = temp_sibling(dest)
    writer = _Writer(tmp, dest, warnings)
    renamed = False
    try:
        writer.run(plan.ops)
        # Every file of the merged tree durable before its name is: one syncfs.
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syncfs(fd)
        finally:
            os.close(fd)
        tmp.rename(dest)
        renamed = True
        fsync_dir(dest.parent)
    except BaseException as exc:
        remove_tree(dest if renamed else tmp)
        if isinstance(exc, OSError):
            raise writer.error(exc) from exc
        raise
    return plan.result()
