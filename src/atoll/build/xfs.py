"""An XFS root file system made from a directory, without mounting it.

``mkfs.xfs`` (xfsprogs 6.1, Debian bookworm) fills a new file system from a
*prototype file* (``-p FILE``), a list of tokens that names every entry of the
tree, depth first::

    atoll                       a dummy first token (formerly the boot file)
    0 0                         two ignored numbers (formerly blocks and inodes)
    d--755 0 0                  the root directory: type, setuid, setgid, mode, uid, gid
    boot d--755 0 0             a directory: its entries follow, up to "$"
    grub.cfg ---644 0 0 boot/grub.cfg      a file: its content is copied from the path
    $
    sh l--777 0 0 dash          a symbolic link and its target
    null c--666 0 0 1 3         a device: major and minor
    $

Tokens are separated by white space and a token that starts with ``:``
opens a comment, so a name (or a link target) with white space in it, or one
that starts with ``:`` or is ``$``, cannot be written: it is refused, naming
the path.  File contents are read from paths relative to the tree (mkfs.xfs
runs in it), so the tree's own location does not matter.

What a prototype file cannot say, and what atoll does about it:

- the sticky bit (the mode is three octal digits): set afterwards with
  ``xfs_db -x`` (``write core.mode``) on the unmounted file system;
- hard links: each link becomes a file of its own, so the store's objects and
  the deployment's files (hard links of each other on ext4) take twice the
  space; :func:`tree_usage` counts them that way;
- extended attributes (file capabilities such as ``ping``'s
  ``cap_net_raw``) and timestamps (each file gets the time it is made).

``mkfs.xfs`` has no offset option: the file system is made in a file of the
partition's size in the staging directory and its data copied into the disk
at the partition's offset, holes skipped.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import DiskError, from_oserror
from atoll.run import find_tool, run

#: A name or link target a prototype file cannot carry.
_SPACE = frozenset(" \t\n\r\v\f")
_TYPES = {
    stat.S_IFREG: "-",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFBLK: "b",
    stat.S_IFCHR: "c",
    stat.S_IFIFO: "p",
}
#: xfs_db commands per run when fixing sticky bits (the argument list stays short).
_DB_BATCH = 200
#: mkfs.xfs (xfsprogs 5.19 and later) refuses smaller file systems.
MIN_SIZE = 300 * 1024 * 1024


def _token(text: str, path: str) -> str:
    if not text or _SPACE.intersection(text) or text.startswith(":") or text == "$":
        raise DiskError(
            f"{path}: {text!r} cannot be written into an XFS file system made by "
            "mkfs.xfs from a prototype file (white space, or a leading ':' or '$')",
            hint="rename it in the image, or use --rootfs ext4",
        )
    return text


def _mode(st: os.stat_result) -> str:
    kind = _TYPES.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        raise DiskError("unsupported file type")
    suid = "u" if st.st_mode & stat.S_ISUID else "-"
    sgid = "g" if st.st_mode & stat.S_ISGID else "-"
    return f"{kind}{suid}{sgid}{st.st_mode & 0o777:03o} {st.st_uid} {st.st_gid}"


def write_protofile(tree: Path, dest: Path) -> list[str]:
    """The prototype file of *tree* at *dest*; returns the paths (from the root,
    ``/a/b``) of the entries with the sticky bit, which it cannot carry.
    Sockets are left out (nothing can use one from an image)."""
    sticky: list[str] = []
    lines: list[str] = ["atoll", "0 0"]

    def walk(directory: Path, rel: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode):
                continue
            name = _token(entry.name, path)
            if st.st_mode & stat.S_ISVTX:
                sticky.append(path)
            head = f"{name} {_mode(st)}"
            if stat.S_ISDIR(st.st_mode):
                lines.append(head)
                walk(Path(entry.path), path)
                lines.append("$")
            elif stat.S_ISREG(st.st_mode):
                lines.append(f"{head} {path.lstrip('/')}")
            elif stat.S_ISLNK(st.st_mode):
                lines.append(f"{head} {_token(str(Path(entry.path).readlink()), path)}")
            elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                lines.append(f"{head} {os.major(st.st_rdev)} {os.minor(st.st_rdev)}")
            else:
                lines.append(head)

    try:
        root = tree.lstat()
        lines.append(_mode(root))
        if root.st_mode & stat.S_ISVTX:
            sticky.append("/")
        walk(tree, "")
        lines.append("$")
        dest.write_bytes(("\n".join(lines) + "\n").encode(errors="surrogateescape"))
    except OSError as exc:
        raise from_oserror(exc, str(tree)) from exc
    return sticky


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes in 4 KiB blocks, inodes) of a tree as an XFS file system made from
    a prototype file holds it: each hard link a file of its own."""
    blocks = inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            inodes += 1
            blocks += max(1, math.ceil(st.st_size / 4096))
    return blocks * 4096, inodes + 1


@dataclass(frozen=True)
class Protofile:
    """A prototype file written for a tree, and what it could not say."""

    path: Path
    sticky: list[str]


def prepare(tree: Path, dest: Path) -> Protofile:
    """The prototype file of *tree*: written before anything touches the disk,
    so that a name it cannot carry stops the install first."""
    return Protofile(dest, write_protofile(tree, dest))


def make_xfs(
    target: Path,
    tree: Path,
    *,
    offset: int,
    size: int,
    uuid: str,
    label: str,
    staging: Path,
    proto: Protofile | None = None,
) -> None:
    """An XFS file system holding a copy of *tree*, written at *offset* of *target*."""
    mkfs = find_tool("mkfs.xfs", "xfsprogs")
    xfs_db = find_tool("xfs_db", "xfsprogs")
    if size < MIN_SIZE:
        raise DiskError(f"{target}: an XFS file system needs {MIN_SIZE // (1024 * 1024)} MiB")
    if proto is None:
        proto = prepare(tree, staging / "xfs.proto")
    image = staging / "root.xfs"
    try:
        with image.open("xb") as fh:
            fh.truncate(size)
    except OSError as exc:
        raise from_oserror(exc, str(image)) from exc
    try:
        run([mkfs, "-q", "-L", label, "-m", f"uuid={uuid}", "-p", proto.path.resolve(),
             image.resolve()], cwd=tree)  # fmt: skip
        for start in range(0, len(proto.sticky), _DB_BATCH):
            commands: list[str | Path] = []
            for path in proto.sticky[start : start + _DB_BATCH]:
                mode = (tree / path.lstrip("/")).lstat().st_mode
                commands += ["-c", f"path {path}", "-c", f"write core.mode 0{mode:o}"]
            run([xfs_db, "-x", *commands, image])
        copy_sparse(image, target, offset)
    finally:
        image.unlink(missing_ok=True)
        proto.path.unlink(missing_ok=True)


def copy_sparse(source: Path, target: Path, offset: int) -> None:
    """Copy *source*'s data into *target* at *offset*, skipping its holes."""
    chunk = 4 * 1024 * 1024
    try:
        with source.open("rb") as src, target.open("r+b") as dst:
            fd = src.fileno()
            end = os.fstat(fd).st_size
            pos = 0
            while pos < end:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: nothing but a hole to the end
                    break
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
                while pos < hole:
                    data = os.pread(fd, min(chunk, hole - pos), pos)
                    os.pwrite(dst.fileno(), data, offset + pos)
                    pos += len(data)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        raise from_oserror(exc, str(target)) from exc
