"""Boot entries and boot counting in the sysroot's ``boot/``.

atoll writes real Boot Loader Specification type #1 entries (format and order:
:mod:`atoll.sysroot.bootloader.bls`) that systemd-boot reads as they are; GRUB will read
them through a generated configuration.  Layout, part of sysroot format 1
(:data:`atoll.sysroot.layout.SYSROOT_VERSION`)::

    BOOT/                                   the sysroot's boot/: $BOOT for the bootloader
    ├── .atoll-lock                         flock: swaps, counter renames, kernel installs
    ├── loader -> loader.1                  symlink: the set of entries the bootloader sees
    ├── loader.1/                           the current set (the next write goes to loader.0)
    │   ├── entries.srel                    "type1": these entries follow the BLS
    │   ├── loader.conf                     only if someone put it there; carried over
    │   └── entries/
    │       ├── atoll-default-3+2-1.conf    being assessed: 2 tries left, 1 done
    │       ├── atoll-default-2.conf        no counter: good
    │       └── atoll-default-1+0-3.conf    no tries left: bad, sorts last
    └── atoll/
        └── SHA256/                         one kernel, content-addressed (install_kernel)
            ├── vmlinuz-KVER
            └── initramfs-KVER.img

**Order.**  The caller gives the entries in boot order, the first being the
default.  :func:`write_entries` gives all of them ``sort-key atoll`` and
``version N`` counting down (N entries: N, N-1, ... 1), so that a bootloader
sorting by the BLS rules (:func:`atoll.sysroot.bootloader.bls.bootloader_order`) shows them
in that order and, with nothing else configured, boots the first.  A ``default``
in ``loader.conf`` or the ``LoaderEntryDefault`` EFI variable (``bootctl
set-default``) would override that: atoll sets neither.

**The swap.**  A new set is written complete into the unused ``loader.N``
(files fsynced, then the directories), a symlink to it is made under a temporary
name and renamed over ``loader``, and ``boot/`` is fsynced.  A crash at any
point leaves the old set or the new one in effect.  The unused directory is
removed after the swap; what an interrupted write left behind is removed before
the next one.  This needs a boot file system with symlinks (ext4, xfs: what
ostree also requires of /boot); docs/boot.md says what that means for VFAT.

**Boot counting** (systemd's Automatic Boot Assessment; BLS "Boot counting")::

    ID+3.conf --boot--> ID+2-1.conf --boot--> ID+1-2.conf --boot--> ID+0-3.conf: bad
         \\                  \\                    \\                    \\
          `------------------`--------------------`--------------------`--> ID.conf: good
                                 mark_good, from any of these states

* The bootloader, each time it boots an entry with a counter, first renames it
  to one try less left and one more done.  :func:`choose_entry` does this on
  the directory device, where atoll plays the firmware and the bootloader.
* A boot found good removes the counter (systemd-bless-boot ``good``:
  :func:`mark_good`); one found bad sets it to ``+0`` (:func:`mark_bad`).
* A bad entry sorts after all others, so the next boot falls back to the next
  entry in boot order: the previous deployment.  When every entry is bad,
  systemd-boot still boots the first, and so does :func:`choose_entry`, without
  counting.

**Locking.**  Every function here holds the flock on ``boot/.atoll-lock``
(:func:`lock_boot`, re-entrant within a thread) while it reads or renames, so a
counter rename never races with a swap.  Lock order: the sysroot lock, the
store lock, then this one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

from atoll.errors import BootEntryError, DigestMismatchError, LockedError, from_oserror
from atoll.faults import crashpoint
from atoll.fsutil import TMP_PREFIX, fsync_dir, remove_tree
from atoll.sysroot.bootloader.bls import (
    KARG,
    BootEntry,
    BootState,
    bootloader_order,
    compare_versions,
    format_entry,
    load_entry,
    parse_entry,
    parse_filename,
)

__all__ = [
    "KARG",
    "SORT_KEY",
    "BootEntry",
    "BootState",
    "bootloader_order",
    "choose_entry",
    "compare_versions",
    "current_loader",
    "format_entry",
    "install_kernel",
    "kernel_digest",
    "load_entry",
    "lock_boot",
    "mark_bad",
    "mark_good",
    "parse_entry",
    "parse_filename",
    "prune_kernels",
    "read_entries",
    "reset_counter",
    "set_counter",
    "write_entries",
]

LOCK_NAME = ".atoll-lock"
LOADER_LINK = "loader"
LOADER_DIRS = ("loader.0", "loader.1")
ENTRIES = "entries"
SREL = "entries.srel"
KERNELS = "atoll"
#: The sort-key of every entry atoll writes.
SORT_KEY = "atoll"

_KVER = re.compile(r"[A-Za-z0-9._+-]+")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


# --- the lock and the loader directories --------------------------------------------

_held = threading.local()


@contextlib.contextmanager
def lock_boot(boot_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the boot lock (flock on ``boot/.atoll-lock``).  Re-entrant in a thread;
    with ``wait=False`` a lock held elsewhere raises :class:`LockedError`."""
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    key = os.path.realpath(boot_dir)
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    path = boot_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        try:  # a reader without write access (status) can still lock an existing file
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise from_oserror(exc, str(path)) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(
                f"{boot_dir}: another atoll process is changing the boot entries",
                hint="wait for it to finish and try again",
            ) from None
        depth[key] = 1
        try:
            yield
        finally:
            del depth[key]
    finally:
        os.close(fd)


def current_loader(boot_dir: Path) -> str | None:
    """``loader.0`` or ``loader.1``: where ``boot/loader`` points; None before the
    first write."""
    link = boot_dir / LOADER_LINK
    try:
        target = str(link.readlink())
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise BootEntryError(
                f"{link}: a directory, not the symlink atoll switches between "
                f"{' and '.join(LOADER_DIRS)}",
                hint="move the directory away; atoll writes the boot entries anew",
            ) from None
        raise from_oserror(exc, str(link)) from exc
    if target not in LOADER_DIRS:
        raise BootEntryError(
            f"{link}: points to {target!r}, not to {' or '.join(LOADER_DIRS)}",
            hint="remove the symlink; atoll writes the boot entries anew",
        )
    return target


def _scan(entries_dir: Path) -> list[tuple[str, BootEntry]]:
    """(file name, entry) for each ``*.conf`` file; two files for one id are an error."""
    try:
        names = sorted(
            p.name
            for p in entries_dir.iterdir()
            if p.name.endswith(".conf") and not p.name.startswith(".")
        )
    except OSError as exc:
        raise from_oserror(exc, str(entries_dir)) from exc
    found: list[tuple[str, BootEntry]] = []
    seen: dict[str, str] = {}
    for name in names:
        entry = load_entry(entries_dir / name)
        if entry.id in seen:
            raise BootEntryError(
                f"{entries_dir}: {seen[entry.id]} and {name} are the same entry {entry.id}"
            )
        seen[entry.id] = name
        found.append((name, entry))
    return found


def scan_current(boot_dir: Path) -> tuple[Path | None, list[tuple[str, BootEntry]]]:
    """The current entries directory (None: none written yet) and its files.
    Call it with the boot lock held."""
    loader = current_loader(boot_dir)
    if loader is None:
        return None, []
    entries_dir = boot_dir / loader / ENTRIES
    return entries_dir, _scan(entries_dir)


def read_entries(boot_dir: Path) -> list[BootEntry]:
    """The current entries, in bootloader order (:func:`bootloader_order`)."""
    with lock_boot(boot_dir):
        _, found = scan_current(boot_dir)
    return bootloader_order(entry for _, entry in found)


def _plan(entries: Sequence[BootEntry], counting: Mapping[str, int]) -> list[BootEntry]:
    if not entries:
        raise BootEntryError(
            "refusing to write an empty set of boot entries: the machine could not boot"
        )
    seen: set[str] = set()
    for entry in entries:
        if entry.id.lower() in seen:  # systemd-boot compares ids lowercased
            raise BootEntryError(f"boot entry id {entry.id} is given twice")
        seen.add(entry.id.lower())
    unknown = sorted(set(counting) - {e.id for e in entries})
    if unknown:
        raise BootEntryError(f"boot counting names no entry being written: {', '.join(unknown)}")
    for entry_id, tries in counting.items():
        if tries < 1:
            raise BootEntryError(f"boot entry {entry_id}: tries must be 1 or more, not {tries}")
    planned = []
    for index, entry in enumerate(entries):
        left: int | None = entry.tries_left
        done = entry.tries_done
        if entry.id in counting:
            left, done = counting[entry.id], 0
        planned.append(
            replace(
                entry,
                sort_key=SORT_KEY,
                version=str(len(entries) - index),
                tries_left=left,
                tries_done=done,
            )
        )
    return planned


def _create_file(path: Path, data: bytes) -> None:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _clean_leftovers(boot_dir: Path, current: str | None) -> None:
    """Remove what an interrupted write left: the unused loader directory and
    temporary symlinks."""
    for name in LOADER_DIRS:
        if name != current:
            remove_tree(boot_dir / name)
    for child in boot_dir.iterdir():
        if child.name.startswith(f"{TMP_PREFIX}{LOADER_LINK}."):
            child.unlink(missing_ok=True)


def write_entries(
    boot_dir: Path,
    entries: Sequence[BootEntry],
    *,
    counting: Mapping[str, int] | None = None,
) -> list[BootEntry]:
    """Replace the set of entries with *entries*, given in boot order (first: default).

    Each entry's ``sort_key`` and ``version`` are replaced by values that encode
    that order.  An entry named in *counting* gets a fresh counter of that many
    tries (``ID+N.conf``); the others keep the counter they carry (None: none),
    so entries read back with :func:`read_entries` keep their state.  Returns the
    entries as written."""
    planned = _plan(entries, counting or {})
    with lock_boot(boot_dir):
        current = current_loader(boot_dir)
        new_name = LOADER_DIRS[1] if current == LOADER_DIRS[0] else LOADER_DIRS[0]
        new = boot_dir / new_name
        tmp = boot_dir / f"{TMP_PREFIX}{LOADER_LINK}.{secrets.token_hex(4)}"
        swapped = False
        try:
            _clean_leftovers(boot_dir, current)
            (new / ENTRIES).mkdir(parents=True)
            for entry in planned:
                _create_file(new / ENTRIES / entry.filename, format_entry(entry).encode())
            _create_file(new / SREL, b"type1\n")
            if current is not None:
                for child in sorted((boot_dir / current).iterdir()):
                    if child.name not in (ENTRIES, SREL) and _is_plain_file(child):
                        _create_file(new / child.name, child.read_bytes())
            fsync_dir(new / ENTRIES)
            fsync_dir(new)
            fsync_dir(boot_dir)
            crashpoint("boot-entries-written")
            tmp.symlink_to(new_name)
            crashpoint("boot-symlink-made")
            tmp.rename(boot_dir / LOADER_LINK)
            swapped = True
            fsync_dir(boot_dir)
        except BaseException as exc:
            if not swapped:
                tmp.unlink(missing_ok=True)
                remove_tree(new)
            if isinstance(exc, OSError):
                raise from_oserror(exc, str(boot_dir / LOADER_LINK)) from exc
            raise
        crashpoint("boot-swapped")
        if current is not None:
            remove_tree(boot_dir / current)
            with contextlib.suppress(OSError):
                fsync_dir(boot_dir)
    return planned


# --- boot counting ------------------------------------------------------------------


def _rename(entries_dir: Path, old_name: str, entry: BootEntry) -> BootEntry:
    if old_name != entry.filename:
        try:
            (entries_dir / old_name).rename(entries_dir / entry.filename)
            fsync_dir(entries_dir)
        except OSError as exc:
            raise from_oserror(exc, str(entries_dir / old_name)) from exc
    return entry


def choose_entry(boot_dir: Path) -> BootEntry:
    """Play the bootloader: pick the entry to boot and count the attempt.

    The first entry in bootloader order whose counter is not at ``+0`` (or, if
    all are bad, the first); if it has a counter, its file is renamed to one
    try less left and one more done before this returns.  Returns the entry as
    it is now on disk."""
    with lock_boot(boot_dir):
        entries_dir, found = scan_current(boot_dir)
        if entries_dir is None or not found:
            raise BootEntryError(
                f"{boot_dir}: no boot entries: there is nothing to boot",
                hint="install or deploy an image first",
            )
        names = {entry.id: name for name, entry in found}
        ordered = bootloader_order(entry for _, entry in found)
        chosen = next((e for e in ordered if e.tries_left != 0), ordered[0])
        if chosen.tries_left is None or chosen.tries_left == 0:
            return chosen
        counted = replace(
            chosen, tries_left=chosen.tries_left - 1, tries_done=chosen.tries_done + 1
        )
        return _rename(entries_dir, names[chosen.id], counted)


def _find(boot_dir: Path, entry_id: str) -> tuple[Path, str, BootEntry]:
    """The entries directory, file name and entry of *entry_id*; hold the lock."""
    entries_dir, found = scan_current(boot_dir)
    for name, entry in found:
        if entry.id == entry_id and entries_dir is not None:
            return entries_dir, name, entry
    known = ", ".join(entry.id for _, entry in found) or "none"
    raise BootEntryError(f"{boot_dir}: no boot entry {entry_id} (entries: {known})")


def mark_good(boot_dir: Path, entry_id: str) -> BootEntry:
    """The boot of *entry_id* was good: remove its counter (``ID.conf``)."""
    with lock_boot(boot_dir):
        entries_dir, name, entry = _find(boot_dir, entry_id)
        return _rename(entries_dir, name, replace(entry, tries_left=None, tries_done=0))


def mark_bad(boot_dir: Path, entry_id: str) -> BootEntry:
    """The boot of *entry_id* was bad: no tries left (``ID+0-DONE.conf``, or
    ``ID+0.conf`` when no try was counted)."""
    with lock_boot(boot_dir):
        entries_dir, name, entry = _find(boot_dir, entry_id)
        return _rename(entries_dir, name, replace(entry, tries_left=0))


def reset_counter(boot_dir: Path, entry_id: str, tries: int) -> BootEntry:
    """Give *entry_id* a fresh counter of *tries* tries (``ID+TRIES.conf``)."""
    if tries < 1:
        raise BootEntryError(f"boot entry {entry_id}: tries must be 1 or more, not {tries}")
    with lock_boot(boot_dir):
        entries_dir, name, entry = _find(boot_dir, entry_id)
        return _rename(entries_dir, name, replace(entry, tries_left=tries, tries_done=0))


def set_counter(boot_dir: Path, entry_id: str, left: int, done: int) -> BootEntry:
    """Give *entry_id* the counter ``+LEFT-DONE``: what a bootloader that counts
    elsewhere (GRUB, in grubenv) has counted, copied back (atoll.boot.record)."""
    if left < 0 or done < 0:
        raise BootEntryError(f"boot entry {entry_id}: a counter cannot be negative")
    with lock_boot(boot_dir):
        entries_dir, name, entry = _find(boot_dir, entry_id)
        return _rename(entries_dir, name, replace(entry, tries_left=left, tries_done=done))


# --- kernels ----------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    return digest.hexdigest()


def _copy_verified(src: Path, dest: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with src.open("rb") as fin, dest.open("xb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    dest.chmod(0o644)
    if digest.hexdigest() != expected:
        raise DigestMismatchError(f"{src}: changed while it was being copied to {dest.parent}")


def kernel_digest(kver: str, vmlinuz_sha256: str, initramfs_sha256: str | None) -> str:
    """The name of a kernel's directory: the sha256 of canonical JSON naming the
    kernel version and the sha256 of each file."""
    manifest = {"initramfs": initramfs_sha256, "kver": kver, "vmlinuz": vmlinuz_sha256}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def install_kernel(
    boot_dir: Path, kver: str, vmlinuz: Path, initramfs: Path | None
) -> tuple[str, str | None]:
    """Copy a kernel (and initramfs) to ``boot/atoll/DIGEST/`` and return the paths
    to write in entries (``linux``, ``initrd``), relative to ``boot/``.

    The directory is written under a temporary name, fsynced and renamed into
    place; when it exists already the call changes nothing."""
    if not _KVER.fullmatch(kver):
        raise BootEntryError(f"kernel version {kver!r} is not valid (letters, digits, '._+-')")
    vmlinuz_sha = _file_sha256(vmlinuz)
    initramfs_sha = _file_sha256(initramfs) if initramfs is not None else None
    digest = kernel_digest(kver, vmlinuz_sha, initramfs_sha)
    files = [(vmlinuz, f"vmlinuz-{kver}", vmlinuz_sha)]
    if initramfs is not None and initramfs_sha is not None:
        files.append((initramfs, f"initramfs-{kver}.img", initramfs_sha))
    linux_path, *initrd_paths = (f"/{KERNELS}/{digest}/{name}" for _, name, _ in files)
    initrd_path = initrd_paths[0] if initrd_paths else None
    kernels = boot_dir / KERNELS
    final = kernels / digest
    with lock_boot(boot_dir):
        if final.is_dir():
            return linux_path, initrd_path
        tmp = kernels / f"{TMP_PREFIX}{digest}.{secrets.token_hex(4)}"
        try:
            if not kernels.is_dir():
                kernels.mkdir()
                fsync_dir(boot_dir)
            _remove_temporaries(kernels)
            tmp.mkdir()
            for src, name, sha in files:
                _copy_verified(src, tmp / name, sha)
            fsync_dir(tmp)
            crashpoint("boot-kernel-copied")
            tmp.rename(final)
            fsync_dir(kernels)
        except OSError as exc:
            remove_tree(tmp)
            raise from_oserror(exc, str(final)) from exc
        except BaseException:
            remove_tree(tmp)
            raise
    return linux_path, initrd_path


def _remove_temporaries(kernels: Path) -> list[str]:
    removed = []
    for child in kernels.iterdir():
        if child.name.startswith(TMP_PREFIX):
            remove_tree(child)
            removed.append(child.name)
    return removed


def _kernel_dir_of(path: str) -> str | None:
    parts = PurePosixPath("/", path).parts
    return parts[2] if len(parts) > 3 and parts[1] == KERNELS else None


def prune_kernels(boot_dir: Path, keep_paths: Iterable[str] = ()) -> list[str]:
    """Remove the kernel directories under ``boot/atoll/`` that neither *keep_paths*
    nor any current entry use; return their names."""
    kernels = boot_dir / KERNELS
    with lock_boot(boot_dir):
        _, found = scan_current(boot_dir)
        used = [*keep_paths]
        for _, entry in found:
            used += [entry.linux, *entry.initrd]
        keep = {d for d in map(_kernel_dir_of, used) if d is not None}
        if not kernels.is_dir():
            return []
        try:
            removed = _remove_temporaries(kernels)
            for child in sorted(kernels.iterdir()):
                if _DIGEST.fullmatch(child.name) and child.name not in keep:
                    remove_tree(child)
                    removed.append(child.name)
            fsync_dir(kernels)
        except OSError as exc:
            raise from_oserror(exc, str(kernels)) from exc
    return sorted(removed)
