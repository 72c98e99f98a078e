"""Atomic, durable file writes: temporary name in the same directory, fsync,
rename, fsync the directory.  A crash leaves the old file or the new one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from atoll.errors import from_oserror

TMP_PREFIX = ".atoll-tmp-"


def temp_sibling(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.urandom(4).hex()}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Yield a file; on a clean exit it replaces *path* atomically."""
    tmp = temp_sibling(path)
    try:
        with tmp.open("xb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise from_oserror(exc, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    with atomic_writer(path, mode, durable=durable) as fh:
        fh.write(data)


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        import shutil  # with its compression modules: only for the commands that remove trees

        shutil.rmtree(path, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """fsync every directory under *root* (files were synced as they were written),
    so a rename of *root* cannot make a directory visible whose entries are lost."""
    dirs = [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on directory *path*.

    Serialises atoll processes that rewrite the same ``index.json``; other tools
    (skopeo) do not take it, as containers/image does not lock layouts either."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically with renameat2(RENAME_EXCHANGE).

    False when the kernel, libc or file system cannot do it; the caller then
    falls back to two renames (with a short window where *b* is missing)."""
    import ctypes  # here: ctypes costs a few ms to import, and most runs never swap

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Make directory *new* appear at *target*, replacing what is there.

    *target* may be absent, an empty directory (rename(2) replaces it) or a
    directory tree, which is swapped out atomically and then removed."""
    try:
        if not target.exists() or not any(target.iterdir()):
            # rename(2) replaces an empty directory by itself.
            new.rename(target)
        elif exchange(new, target):
            # *new* now holds the old tree.
            remove_tree(new)
        else:
            old = temp_sibling(target)
            target.rename(old)
            try:
                new.rename(target)
            except BaseException:
                old.rename(target)
                raise
            remove_tree(old)
        fsync_dir(target.parent)
    except OSError as exc:
        raise from_oserror(exc, str(target)) from exc


def syncfs(fd: int) -> None:
    """Write out every dirty page and inode of the file system that holds the
    open file *fd* (syncfs(2)): one call makes a whole batch of files durable,
    where an fsync per file would wait for the disk once per file.  Falls back
    to sync(2) where libc has no syncfs."""
    import ctypes

    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    if func(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class HashingWriter:
    """A file to write to that passes bytes on to *out*, hashing and counting them."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


_MAX_SYMLINKS = 40


def resolve_in_root(root: Path, inside: str) -> Path:
    """The host path of *inside* (an absolute path as seen in *root*), following
    symlinks as a chroot would: ``/`` and ``..`` stop at *root*."""
    pending = deque(PurePosixPath(inside).parts[1:])
    current = PurePosixPath("/")
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / str(candidate).lstrip("/")
        if not host.is_symlink():
            current = candidate
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(host))
        target = PurePosixPath(host.readlink())
        if target.is_absolute():
            current = PurePosixPath("/")
            pending.extendleft(reversed(target.parts[1:]))
        else:
            pending.extendleft(reversed(target.parts))
    return root / str(current).lstrip("/")
