"""Checkout: a commit becomes a directory tree.

Files and symlinks are hardlinks to their objects (``linkat`` without
following symlinks), so a checkout costs a directory entry per file and no
data.  Directories are made with their mode, owner and xattrs (a setgid or
sticky mode, an owner and xattrs are applied after the contents, so a setgid
directory does not change what is made in it; a plain mode is given to mkdir).
Where a hardlink cannot be made the object is copied, keeping mode, owner,
xattrs and mtime 0: for the whole checkout when the store is on another file
system (``EXDEV``), for one file when its object has too many links (``EMLINK``).

The subtrees named in ``copy_paths`` (``etc`` by default) are always copies:
users edit /etc in place, and an edit through a hardlink would change the
store's object and every other deployment sharing it.

**Incremental checkout** (``reuse=(old_dir, old_commit)``): *old_dir* must be
an unmodified checkout of *old_commit* (except in ``copy_paths``, which are
always made afresh).  It is renamed to *dest* and turned into the new commit by
walking both trees side by side: a subdirectory with the same tree id and
metadata in both is skipped without looking inside, so the work grows with
what changed, not with the size of the tree.  *old_dir* is consumed: once it
has been renamed to *dest* it no longer exists, whether the checkout then
succeeds or not (a failed checkout removes *dest*).

On failure the destination is removed.  The checkout ends with ``syncfs`` on
the destination's file system: every directory, link and copied file is on
disk when the call returns (one wait for the disk instead of an fsync per
file; nothing refers to the tree before the caller renames or records it).
A caller that makes several trees and syncs once itself may pass
``sync=False``; it must then sync before anything names the tree.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.errors import (
    AtollError,
    InvalidInputError,
    NotFoundError,
    StoreCorruptError,
    from_oserror,
)
from atoll.fsutil import remove_tree, syncfs
from atoll.store.format import FILE_SUFFIX, DirMeta, EntryKind, Xattrs, object_relpath
from atoll.store.objects import read_xattrs

if TYPE_CHECKING:
    from atoll.store.store import Store

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 24
#: Paths relative to a directory descriptor stay shorter than this (PATH_MAX is 4096).
_LONG_PATH = 2048


@dataclass(frozen=True)
class CheckoutStats:
    #: Files, symlinks and special files placed (linked or copied).
    files: int
    #: Directories made.
    dirs: int
    hardlinked: int
    copied: int
    #: Incremental only: paths removed from the old tree, and subtrees kept as
    #: they were without being looked into.
    removed: int
    kept_subtrees: int
    incremental: bool
    elapsed: float

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "hardlinked": self.hardlinked,
            "copied": self.copied,
            "removed": self.removed,
            "keptSubtrees": self.kept_subtrees,
            "incremental": self.incremental,
            "elapsed": round(self.elapsed, 3),
        }


def _normalize(paths: Sequence[str]) -> set[str]:
    out = set()
    for path in paths:
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts or ".." in parts:
            raise InvalidInputError(f"copy path {path!r} must name a path below the root")
        out.add("/".join(parts))
    return out


class _Materializer:
    def __init__(self, store: Store, copy_paths: set[str]) -> None:
        self.store = store
        self.objects_fd = os.open(store.objects, _O_DIR)
        self.objects = str(store.objects)
        self.copy_paths = copy_paths
        # Directories on the way to a copy path: an incremental checkout must go
        # through them even when they did not change.
        self.copy_ancestors = {
            "/".join(p.split("/")[:i]) for p in copy_paths for i in range(p.count("/") + 1)
        }
        self.umask = _umask()
        self.link_ok = True
        self.files = self.dirs = self.hardlinked = self.copied = 0
        self.removed = self.kept = 0

    def close(self) -> None:
        os.close(self.objects_fd)

    # --- fresh trees ------------------------------------------------------------------

    def fill(self, tid: str, base: int, at: str, rel: str, copying: bool) -> None:
        """Fill the empty directory *at* (relative to the open directory *base*;
        "" for *base* itself) with tree *tid*; *rel* is its path in the commit.

        Everything below is made by paths relative to *base*, not through a file
        descriptor per directory: two system calls fewer per directory."""
        if len(at) > _LONG_PATH:
            fd = os.open(at, _O_DIR, dir_fd=base)
            try:
                self.fill(tid, fd, "", rel, copying)
            finally:
                os.close(fd)
            return
        tree = self.store.tree(tid)
        files = tree.files
        prefix = f"{at}/" if at else ""
        if files:
            self.files += len(files)
            if copying or not self.link_ok or rel in self.copy_ancestors:
                for name, oid in files.items():
                    self.place(prefix + name, oid, base, copying or self._is_copy(rel, name))
            else:
                link = os.link
                ofd = self.objects_fd
                linked = 0
                for name, oid in files.items():
                    try:
                        link(
                            f"{oid[:2]}/{oid[2:]}.file",
                            prefix + name,
                            src_dir_fd=ofd,
                            dst_dir_fd=base,
                            follow_symlinks=False,
                        )
                        linked += 1
                    except OSError as exc:
                        self._link_failed(exc, oid, prefix + name, base)
                self.hardlinked += linked
        for name, (sub, meta) in tree.dirs.items():
            child_rel = f"{rel}/{name}" if rel else name
            self._make_dir(prefix + name, sub, meta, base, child_rel, copying)

    def _make_dir(
        self, at: str, tid: str, meta: DirMeta, base: int, rel: str, copying: bool
    ) -> None:
        # A plain mode is given to mkdir itself, saving a chmod; a setgid or
        # sticky directory is made private and gets its mode after its contents.
        plain = self.umask is not None and not meta.mode & (0o7000 | self.umask)
        os.mkdir(at, meta.mode if plain else 0o700, dir_fd=base)
        self.dirs += 1
        self.fill(tid, base, at, rel, copying or rel in self.copy_paths)
        if not plain or meta.uid or meta.gid or meta.xattrs:
            apply_meta_at(base, at, meta)

    def _is_copy(self, rel: str, name: str) -> bool:
        return (f"{rel}/{name}" if rel else name) in self.copy_paths

    def place(self, name: str, oid: str, fd: int, copying: bool) -> None:
        if copying or not self.link_ok:
            self.copy(oid, name, fd)
            return
        try:
            os.link(
                object_relpath(oid, FILE_SUFFIX),
                name,
                src_dir_fd=self.objects_fd,
                dst_dir_fd=fd,
                follow_symlinks=False,
            )
            self.hardlinked += 1
        except OSError as exc:
            self._link_failed(exc, oid, name, fd)

    def _link_failed(self, exc: OSError, oid: str, name: str, fd: int) -> None:
        if exc.errno == errno.EXDEV:
            self.link_ok = False
        elif exc.errno == errno.ENOENT:
            self._check_object(oid, name)
            raise exc
        elif exc.errno != errno.EMLINK:
            raise exc
        self.copy(oid, name, fd)

    def _check_object(self, oid: str, name: str) -> None:
        rel = object_relpath(oid, FILE_SUFFIX)
        if not os.access(rel, os.F_OK, dir_fd=self.objects_fd, follow_symlinks=False):
            raise StoreCorruptError(
                f"the object store {self.store.path} lacks file object {oid} (for {name!r})",
                hint="run atoll store fsck --repair, then import the image again",
            )

    def copy(self, oid: str, name: str, fd: int) -> None:
        """Copy a file object to *name* in directory *fd*, metadata included."""
        rel = object_relpath(oid, FILE_SUFFIX)
        try:
            st = os.stat(rel, dir_fd=self.objects_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._check_object(oid, name)
            raise
        xattrs = read_xattrs(f"{self.objects}/{rel}")
        mode = st.st_mode
        if stat.S_ISREG(mode):
            src = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.objects_fd)
            try:
                dst = os.open(name, _O_NEW, 0o600, dir_fd=fd)
                try:
                    _copy_data(src, dst, st.st_size)
                    if st.st_uid or st.st_gid:
                        os.fchown(dst, st.st_uid, st.st_gid)
                    os.fchmod(dst, stat.S_IMODE(mode))
                    for key, value in xattrs:
                        os.setxattr(dst, key, value)
                    os.utime(dst, ns=(0, 0))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        else:
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(rel, dir_fd=self.objects_fd), name, dir_fd=fd)
            else:
                os.mknod(name, mode, st.st_rdev, dir_fd=fd)
            if st.st_uid or st.st_gid:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(name, stat.S_IMODE(mode), dir_fd=fd)
            path = f"/proc/self/fd/{fd}/{name}"
            for key, value in xattrs:
                os.setxattr(path, key, value, follow_symlinks=False)
            os.utime(name, ns=(0, 0), dir_fd=fd, follow_symlinks=False)
        self.copied += 1

    # --- incremental ------------------------------------------------------------------

    def update(self, old_tid: str, new_tid: str, fd: int, rel: str) -> None:
        """Turn directory *fd*, a checkout of *old_tid*, into one of *new_tid*."""
        old = self.store.tree(old_tid)
        new = self.store.tree(new_tid)
        for name in old.files:
            if name not in new.files:
                os.unlink(name, dir_fd=fd)
                self.removed += 1
        for name in old.dirs:
            if name not in new.dirs:
                shutil.rmtree(name, dir_fd=fd)
                self.removed += 1
        for name, oid in new.files.items():
            copy = self._is_copy(rel, name)
            prev = old.files.get(name)
            if prev == oid and not copy:
                continue
            if prev is not None:
                os.unlink(name, dir_fd=fd)
            self.files += 1
            self.place(name, oid, fd, copy)
        for name, (tid, meta) in new.dirs.items():
            child_rel = f"{rel}/{name}" if rel else name
            before = old.dirs.get(name)
            if child_rel in self.copy_paths or before is None:
                if before is not None:
                    shutil.rmtree(name, dir_fd=fd)
                self._make_dir(name, tid, meta, fd, child_rel, False)
                continue
            ptid, pmeta = before
            if ptid == tid and pmeta == meta and child_rel not in self.copy_ancestors:
                self.kept += 1
                continue
            cfd = os.open(name, _O_DIR, dir_fd=fd)
            try:
                if ptid != tid or child_rel in self.copy_ancestors:
                    self.update(ptid, tid, cfd, child_rel)
                if pmeta != meta:
                    apply_meta(cfd, meta, pmeta.xattrs)
            finally:
                os.close(cfd)


def apply_meta_at(base: int, at: str, meta: DirMeta) -> None:
    """Give the new directory *at* (relative to *base*) its owner, mode, xattrs."""
    if meta.uid or meta.gid:
        os.chown(at, meta.uid, meta.gid, dir_fd=base, follow_symlinks=False)
    os.chmod(at, meta.mode, dir_fd=base)
    if meta.xattrs:
        path = f"/proc/self/fd/{base}/{at}"
        for key, value in meta.xattrs:
            os.setxattr(path, key, value, follow_symlinks=False)


def apply_meta(fd: int, meta: DirMeta, old_xattrs: Xattrs = ()) -> None:
    if meta.uid or meta.gid:
        os.fchown(fd, meta.uid, meta.gid)
    os.fchmod(fd, meta.mode)
    keep = {k for k, _ in meta.xattrs}
    for key, _ in old_xattrs:
        if key not in keep:
            os.removexattr(fd, key)
    for key, value in meta.xattrs:
        os.setxattr(fd, key, value)


def _umask() -> int | None:
    """The process's umask, read without changing it (Linux 4.7 and later)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _copy_data(src: int, dst: int, size: int) -> None:
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, _COPY_CHUNK))
            if n == 0:
                break
            left -= n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while left > 0:
        chunk = os.read(src, min(left, 1 << 20))
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        left -= len(chunk)


def _stats(m: _Materializer, incremental: bool, start: float) -> CheckoutStats:
    return CheckoutStats(
        files=m.files,
        dirs=m.dirs,
        hardlinked=m.hardlinked,
        copied=m.copied,
        removed=m.removed,
        kept_subtrees=m.kept,
        incremental=incremental,
        elapsed=time.monotonic() - start,
    )


def checkout(
    store: Store,
    commit_id: str,
    dest: Path,
    *,
    copy_paths: Sequence[str] = ("etc",),
    reuse: tuple[Path, str] | None = None,
    sync: bool = True,
) -> CheckoutStats:
    start = time.monotonic()
    commit = store.commit(commit_id)
    if store.is_partial(commit_id):
        raise StoreCorruptError(
            f"commit {commit_id} is partial: fsck removed objects it needs",
            hint="import its image again to fetch them",
        )
    copies = _normalize(copy_paths)
    if os.path.lexists(dest):
        raise InvalidInputError(f"checkout destination {dest} already exists")
    old_tree = None
    old_root = None
    if reuse is not None:
        old_dir, old_commit_id = reuse
        old = store.commit(old_commit_id)
        old_tree, old_root = old.tree, old.root
        if old_dir.is_symlink() or not old_dir.is_dir():
            raise InvalidInputError(f"{old_dir}: not a directory to reuse for a checkout")
    with store.lock(shared=True):
        m = _Materializer(store, copies)
        try:
            if reuse is not None:
                reuse[0].rename(dest)
            else:
                dest.mkdir(0o700)
            fd = os.open(dest, _O_DIR)
            try:
                if old_tree is not None and old_root is not None:
                    m.update(old_tree, commit.tree, fd, "")
                    apply_meta(fd, commit.root, old_root.xattrs)
                else:
                    m.fill(commit.tree, fd, "", "", False)
                    apply_meta(fd, commit.root)
                if sync:
                    syncfs(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            remove_tree(dest)
            if isinstance(exc, OSError):
                raise from_oserror(exc, f"checkout of {commit_id[:12]} at {dest}") from exc
            raise
        finally:
            m.close()
    return _stats(m, reuse is not None, start)


def checkout_subtree(store: Store, commit_id: str, subpath: str, dest: Path) -> CheckoutStats:
    start = time.monotonic()
    entry = store.lookup(commit_id, subpath, follow=True)
    if entry is None:
        raise NotFoundError(f"{subpath}: no such directory in commit {commit_id}")
    if entry.kind is not EntryKind.DIR:
        raise InvalidInputError(f"{subpath}: not a directory in commit {commit_id}")
    made = not dest.exists()
    if not made and (dest.is_symlink() or not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInputError(f"checkout destination {dest} exists and is not an empty directory")
    meta = DirMeta(entry.mode, entry.uid, entry.gid, _dir_xattrs(store, commit_id, entry.path))
    with store.lock(shared=True):
        m = _Materializer(store, set())
        try:
            if made:
                dest.mkdir(mode=0o700, parents=True)
            fd = os.open(dest, _O_DIR)
            try:
                m.fill(entry.object_id, fd, "", "", True)
                apply_meta(fd, meta)
                syncfs(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            if made:
                remove_tree(dest)
            if isinstance(exc, OSError):
                raise from_oserror(exc, f"checkout of {subpath} at {dest}") from exc
            if isinstance(exc, AtollError):
                raise
            raise
        finally:
            m.close()
    return _stats(m, False, start)


def _dir_xattrs(store: Store, commit_id: str, path: str) -> Xattrs:
    commit = store.commit(commit_id)
    if not path:
        return commit.root.xattrs
    parent, _, name = path.rpartition("/")
    holder = store.lookup(commit_id, parent) if parent else None
    tid = holder.object_id if holder is not None else commit.tree
    return store.tree(tid).dirs[name][1].xattrs
