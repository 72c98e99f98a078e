"""GRUB's environment block (``grubenv``): the one file GRUB writes.

The format (GRUB's ``lib/envblk.c``) is exactly :data:`ENVBLK_SIZE` bytes::

    # GRUB Environment Block\\n          the signature line
    NAME=VALUE\\n                        one line per variable, in file order
    ...
    ###########...#                     '#' up to 1024 bytes

GRUB's ``save_env`` overwrites the file's blocks in place, which is why the
size never changes and why the file must live on a file system GRUB can write
(plain ext2/3/4, not in LVM, RAID or a compressed file system).  atoll reads
it as it is and makes the new block either with ``grub-editenv`` (when
installed, on a temporary copy) or by itself, then writes it the way GRUB
does: over the existing 1024 bytes, in place, and fsyncs it.  The file keeps
its inode and its blocks, so GRUB, which reads ext4 without replaying the
journal, finds the new contents where the old ones were; a file renamed over
it would be a new inode that GRUB might not see (atoll.sysroot.bootloader.flush).  The 1024
bytes are two disk sectors, as GRUB's own writes are.  Only a missing file (or
one of the wrong size) is made anew: written to a temporary file, fsynced and
renamed into place.

Names are letters, digits and ``_``; values are printable ASCII without
``\\``: GRUB would escape a backslash or a newline, atoll has no use for either
and refuses them.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from atoll.errors import BootloaderError, from_oserror
from atoll.fsutil import TMP_PREFIX, fsync_dir
from atoll.run import run

ENVBLK_SIZE = 1024
SIGNATURE = b"# GRUB Environment Block\n"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash


def parse_grubenv(data: bytes, where: str = "grubenv") -> dict[str, str]:
    """The variables of an environment block, in file order."""
    if not data.startswith(SIGNATURE):
        raise BootloaderError(f"{where}: not a GRUB environment block (no signature line)")
    if len(data) != ENVBLK_SIZE:
        raise BootloaderError(f"{where}: {len(data)} bytes, not {ENVBLK_SIZE}")
    found: dict[str, str] = {}
    for raw in data[len(SIGNATURE) :].split(b"\n"):
        line = raw.decode("ascii", errors="replace")
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep and _NAME.fullmatch(name):
            found[name] = value
    return found


def format_grubenv(variables: Mapping[str, str]) -> bytes:
    """An environment block holding *variables* (padded with ``#``)."""
    body = bytearray(SIGNATURE)
    for name, value in variables.items():
        if not _NAME.fullmatch(name):
            raise BootloaderError(f"grubenv: variable name {name!r} is not valid")
        if not _VALUE.fullmatch(value):
            raise BootloaderError(
                f"grubenv: value {value!r} of {name} is not printable ASCII without '\\'"
            )
        body += f"{name}={value}\n".encode()
    if len(body) > ENVBLK_SIZE:
        raise BootloaderError(f"grubenv: the variables need {len(body)} bytes, more than 1024")
    return bytes(body + b"#" * (ENVBLK_SIZE - len(body)))


def read_grubenv(path: Path) -> dict[str, str]:
    """The variables in *path*; an absent file has none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    return parse_grubenv(data, str(path))


def update_grubenv(
    path: Path,
    set_vars: Mapping[str, str] | None = None,
    unset: tuple[str, ...] | list[str] = (),
    *,
    editenv: str | None = None,
) -> dict[str, str]:
    """Set and unset variables in *path* (created when absent) and return the
    variables now in it.  *editenv*: the ``grub-editenv`` to use; None looks for
    one on ``PATH`` and makes the block itself without one."""
    set_vars = dict(set_vars or {})
    current = read_grubenv(path)
    wanted = {k: v for k, v in current.items() if k not in unset and k not in set_vars}
    wanted.update(set_vars)
    format_grubenv(wanted)  # refuse bad names and values before anything is written
    if wanted == current and path.is_file():
        return current
    tool = editenv if editenv is not None else shutil.which("grub-editenv")
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    try:
        if tool:
            if path.is_file():
                shutil.copyfile(path, tmp)
            else:
                run([tool, tmp, "create"])
            if unset:
                run([tool, tmp, "unset", *unset])
            if set_vars:
                run([tool, tmp, "set", *(f"{k}={v}" for k, v in set_vars.items())])
            block = tmp.read_bytes()
        else:
            block = format_grubenv(wanted)
        written = parse_grubenv(block, str(path))
        if _rewrite_in_place(path, block):
            return written
        with tmp.open("wb") as fh:
            fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        tmp.rename(path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return written


def _rewrite_in_place(path: Path, block: bytes) -> bool:
    """Write *block* over an existing environment block of the same size, as
    GRUB's ``save_env`` does; False (nothing written) when there is none."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(block):
            return False
        if os.pwrite(fd, block, 0) != len(block):
            raise OSError(errno.EIO, "short write")
        os.fsync(fd)
        return True
    finally:
        os.close(fd)
