"""Writing objects in batches, and reading a file object's metadata back.

Durability, and why batching is as safe as an fsync per object
--------------------------------------------------------------
An import writes every new object into its own staging directory
``tmp/staging-<random>/`` and does **not** fsync them one by one.  When all
objects of the import are written, :meth:`Staging.publish`:

1. calls ``syncfs`` on the store's file system: every staged object's data,
   inode (mode, owner, xattrs) and directory entry is on disk;
2. renames each staged object into ``objects/xx/`` (a rename onto an existing
   object is success: same id, same bytes);
3. calls ``syncfs`` again: the renames are on disk;
4. only then renames the commit object into ``objects/`` and fsyncs its
   fan-out directory; the caller writes refs after that (temp file, fsync,
   rename, fsync of ``refs/``).

Nothing names an object before its bytes are durable: an object only appears
under ``objects/`` after step 1, and a commit (the only thing a ref or a
deployment names) only after step 3, when everything it reaches is durable.
A crash before step 2 leaves a staging directory that the next import or gc
deletes; a crash during step 2 leaves complete, durable but unreferenced
objects (gc removes them); a crash before step 4 leaves no commit.  This is
the same ordering an fsync per object would give, with two waits for the disk
instead of one per file (ostree does the same: its default is one syncfs per
transaction, see ``ostree-repo-commit.c``).  The price: syncfs also writes out
what other programs left dirty on that file system, so on a disk busy with
other writers an import waits for their data too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from atoll.faults import crashpoint
from atoll.fsutil import syncfs
from atoll.store.format import (
    COMMIT_SUFFIX,
    FILE_SUFFIX,
    OBJECTS_DIR,
    STAGING_PREFIX,
    TMP_DIR,
    FileType,
    Xattrs,
    file_header,
    object_relpath,
)

_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_CHUNK = 1 << 20


class XattrError(Exception):
    """An extended attribute could not be set on an object."""

    def __init__(self, name: str, exc: OSError) -> None:
        super().__init__(f"cannot set extended attribute {name}: {exc.strerror}")
        self.name = name
        self.errno = exc.errno


def _set_xattrs(target: int | str, xattrs: Xattrs, *, follow: bool = True) -> None:
    for name, value in xattrs:
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise XattrError(name, exc) from exc


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Staging:
    """The objects of one import: written to a staging directory, published at once.

    It remembers the ids found in the store or staged here, so each is looked
    up on disk at most once per import."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / OBJECTS_DIR
        self.path = root / TMP_DIR / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        self.path.mkdir()
        self._fd = os.open(self.path, _O_DIR)
        self._objects_fd = os.open(self.objects, _O_DIR)
        self._staged: list[tuple[str, str]] = []
        self._known: set[str] = set()
        self._temp_counter = 0
        self.bytes_written = 0
        self.objects_written = 0

    # --- presence -----------------------------------------------------------------

    def has(self, oid: str, suffix: str) -> bool:
        key = f"{oid}.{suffix}"
        if key in self._known:
            return True
        if os.access(
            object_relpath(oid, suffix), os.F_OK, dir_fd=self._objects_fd, follow_symlinks=False
        ):
            self._known.add(key)
            return True
        return False

    def know(self, oid: str, suffix: str) -> None:
        """Note that the store has this object (the caller has read it)."""
        self._known.add(f"{oid}.{suffix}")

    def stored_file_type(self, oid: str) -> FileType | None:
        """The type of file object *oid* in the store; None when it is not there."""
        try:
            st = os.stat(
                object_relpath(oid, FILE_SUFFIX), dir_fd=self._objects_fd, follow_symlinks=False
            )
        except FileNotFoundError:
            return None
        ftype = _TYPE_OF_FMT.get(stat.S_IFMT(st.st_mode))
        if ftype is not None:
            self._known.add(f"{oid}.{FILE_SUFFIX}")
        return ftype

    def _staged_name(self, oid: str, suffix: str) -> str:
        name = f"{oid}.{suffix}"
        self._known.add(name)
        self._staged.append((name, object_relpath(oid, suffix)))
        self.objects_written += 1
        return name

    # --- file objects -------------------------------------------------------------

    def add_regular(
        self, oid: str, mode: int, uid: int, gid: int, xattrs: Xattrs, data: bytes
    ) -> None:
        name = f"{oid}.{FILE_SUFFIX}"
        fd = os.open(name, _O_NEW, 0o600, dir_fd=self._fd)
        try:
            if data:
                _write_all(fd, data)
            self._finish_fd(fd, mode, uid, gid, xattrs)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=self._fd)
            raise
        os.close(fd)
        self._staged_name(oid, FILE_SUFFIX)
        self.bytes_written += len(data)

    def _finish_fd(self, fd: int, mode: int, uid: int, gid: int, xattrs: Xattrs) -> None:
        if uid or gid:
            os.fchown(fd, uid, gid)
        # After chown, which clears setuid/setgid.
        os.fchmod(fd, mode & 0o7777)
        if xattrs:
            _set_xattrs(fd, xattrs)
        os.utime(fd, ns=(0, 0))

    def add_large(
        self,
        header: bytes,
        pieces: Iterable[bytes],
        mode: int,
        uid: int,
        gid: int,
        xattrs: Xattrs,
    ) -> tuple[str, bool]:
        """Write a file too large to hold in memory: stream *pieces* (an iterator
        of bytes) to a temporary name while hashing; keep it if the id is new.
        Returns (id, written)."""
        self._temp_counter += 1
        name = f"partial-{self._temp_counter}"
        fd = os.open(name, _O_NEW, 0o600, dir_fd=self._fd)
        h = hashlib.sha256(header)
        size = 0
        try:
            for piece in pieces:
                h.update(piece)
                _write_all(fd, piece)
                size += len(piece)
            oid = h.hexdigest()
            if self.has(oid, FILE_SUFFIX):
                os.close(fd)
                os.unlink(name, dir_fd=self._fd)
                return oid, False
            self._finish_fd(fd, mode, uid, gid, xattrs)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=self._fd)
            raise
        os.close(fd)
        os.rename(name, f"{oid}.{FILE_SUFFIX}", src_dir_fd=self._fd, dst_dir_fd=self._fd)
        self._staged_name(oid, FILE_SUFFIX)
        self.bytes_written += size
        return oid, True

    def add_symlink(self, oid: str, target: str, uid: int, gid: int, xattrs: Xattrs) -> None:
        name = f"{oid}.{FILE_SUFFIX}"
        os.symlink(target, name, dir_fd=self._fd)
        try:
            if uid or gid:
                os.chown(name, uid, gid, dir_fd=self._fd, follow_symlinks=False)
            if xattrs:
                _set_xattrs(str(self.path / name), xattrs, follow=False)
            os.utime(name, ns=(0, 0), dir_fd=self._fd, follow_symlinks=False)
        except BaseException:
            os.unlink(name, dir_fd=self._fd)
            raise
        self._staged_name(oid, FILE_SUFFIX)

    def add_special(
        self, oid: str, ftype: FileType, mode: int, uid: int, gid: int, rdev: int, xattrs: Xattrs
    ) -> None:
        name = f"{oid}.{FILE_SUFFIX}"
        kind = {FileType.CHAR: stat.S_IFCHR, FileType.BLOCK: stat.S_IFBLK}.get(ftype, stat.S_IFIFO)
        os.mknod(name, kind | 0o600, rdev, dir_fd=self._fd)
        try:
            path = str(self.path / name)
            if uid or gid:
                os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(name, mode & 0o7777, dir_fd=self._fd)
            if xattrs:
                _set_xattrs(path, xattrs, follow=False)
            os.utime(path, ns=(0, 0), follow_symlinks=False)
        except BaseException:
            os.unlink(name, dir_fd=self._fd)
            raise
        self._staged_name(oid, FILE_SUFFIX)

    # --- tree and commit objects ---------------------------------------------------

    def add_metadata(self, oid: str, suffix: str, data: bytes) -> None:
        name = f"{oid}.{suffix}"
        fd = os.open(name, _O_NEW, 0o644, dir_fd=self._fd)
        try:
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=self._fd)
            raise
        os.close(fd)
        self._staged_name(oid, suffix)
        self.bytes_written += len(data)

    # --- publishing ----------------------------------------------------------------

    def publish(self) -> None:
        """Make every staged object durable and visible; the commit last (see the
        module docstring for the order and why it is safe)."""
        crashpoint("store-import-staged")
        commits = [s for s in self._staged if s[0].endswith(f".{COMMIT_SUFFIX}")]
        others = [s for s in self._staged if not s[0].endswith(f".{COMMIT_SUFFIX}")]
        syncfs(self._fd)
        half = len(others) // 2
        for i, (name, rel) in enumerate(others):
            if i == half:
                crashpoint("store-import-publishing")
            os.rename(name, rel, src_dir_fd=self._fd, dst_dir_fd=self._objects_fd)
        syncfs(self._fd)
        for name, rel in commits:
            os.rename(name, rel, src_dir_fd=self._fd, dst_dir_fd=self._objects_fd)
            fan = os.open(rel.split("/", 1)[0], _O_DIR, dir_fd=self._objects_fd)
            try:
                os.fsync(fan)
            finally:
                os.close(fan)
        self._staged.clear()

    def close(self) -> None:
        """Remove the staging directory and whatever is left in it."""
        for fd in (self._fd, self._objects_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        remove_staging(self.path)


def remove_staging(path: Path) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        child.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


# --- reading file objects back -----------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What the file system says about a file object."""

    ftype: FileType
    mode: int
    uid: int
    gid: int
    size: int
    rdev: int
    target: str | None


def info_from_stat(st: os.stat_result, target: str | None) -> ObjectInfo:
    fmt = stat.S_IFMT(st.st_mode)
    ftype = _TYPE_OF_FMT.get(fmt)
    if ftype is None:
        raise ValueError(f"unexpected file type {fmt:o}")
    size = st.st_size if ftype is FileType.REGULAR else 0
    rdev = st.st_rdev if ftype in (FileType.CHAR, FileType.BLOCK) else 0
    mode = 0o777 if ftype is FileType.SYMLINK else stat.S_IMODE(st.st_mode)
    return ObjectInfo(ftype, mode, st.st_uid, st.st_gid, size, rdev, target)


_TYPE_OF_FMT = {
    stat.S_IFREG: FileType.REGULAR,
    stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFCHR: FileType.CHAR,
    stat.S_IFBLK: FileType.BLOCK,
    stat.S_IFIFO: FileType.FIFO,
}


def read_xattrs(path: str) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def rehash_file_object(path: str) -> tuple[str, ObjectInfo]:
    """The id a file object should have, computed from what is on disk now:
    its type, mode, owner, xattrs, target and content."""
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None  # noqa: PTH115
    info = info_from_stat(st, target)
    header = file_header(
        info.ftype,
        info.mode,
        info.uid,
        info.gid,
        info.size,
        info.rdev,
        os.fsencode(target) if target is not None else b"",
        read_xattrs(path),
    )
    h = hashlib.sha256(header)
    if info.ftype is FileType.REGULAR:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while chunk := os.read(fd, _READ_CHUNK):
                h.update(chunk)
        finally:
            os.close(fd)
    return h.hexdigest(), info
