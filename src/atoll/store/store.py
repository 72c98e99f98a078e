"""The :class:`Store`: opening, locking, refs, commits and reading trees.

The format is described in :mod:`atoll.store.format`; writing objects in
:mod:`atoll.store.objects`.  A ``Store`` is used from one thread at a time.

Locking: :meth:`Store.lock` takes an flock on ``STORE/lock``; exclusive for
whatever writes (import, set_ref, gc, fsck with repair), shared for checkouts,
so gc never deletes objects under a checkout.  The lock is re-entrant within
one thread: a caller may hold it around an import and a ref update.
Readers of refs and trees take no lock: refs are replaced atomically and
objects never change once named.

Writing a store needs root, as ostree's bare mode does: objects carry their
real owners, device nodes are made with mknod, and checkouts hardlink files
that other users own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import (
    InvalidInputError,
    LockedError,
    NotFoundError,
    StoreCorruptError,
    StoreVersionError,
    from_oserror,
)
from atoll.fsutil import fsync_dir, syncfs, write_atomic
from atoll.store import checkout as _checkout
from atoll.store import fsck as _fsck
from atoll.store import gc as _gc
from atoll.store import importer as _importer
from atoll.store.format import (
    CHAINS_DIR,
    COMMIT_SUFFIX,
    CONFIG_FILE,
    FILE_SUFFIX,
    FORMAT_NAME,
    KIND_OF_TYPE,
    LOCK_FILE,
    MANIFESTS_DIR,
    OBJECTS_DIR,
    PARTIAL_DIR,
    REFS_DIR,
    STAGING_PREFIX,
    STATE_DIR,
    STORE_VERSION,
    TMP_DIR,
    TREE_SUFFIX,
    Commit,
    DirMeta,
    EntryKind,
    Tree,
    check_object_id,
    check_ref_name,
    content_id,
    decode_commit,
    decode_tree,
    is_object_id,
    list_names,
    object_relpath,
)
from atoll.store.objects import info_from_stat, remove_staging

_MAX_SYMLINK_HOPS = 40
#: A ref is a commit id and a newline: anything much larger is not a ref.
_REF_MAX = 1024
_TREE_CACHE = 4096
#: read_file refuses files larger than this (it is meant for small files).
READ_FILE_LIMIT = 64 << 20


@dataclass
class _Held:
    """A store lock this thread holds: its file descriptor and nesting depth."""

    fd: int
    exclusive: bool
    depth: int = 0


#: Store locks held, by (store directory, thread).
_HELD: dict[tuple[str, int], _Held] = {}


@dataclass(frozen=True)
class Entry:
    """A path in a commit."""

    path: str
    kind: EntryKind
    #: The file object's id, or for a directory its tree id.
    object_id: str
    mode: int
    uid: int
    gid: int
    size: int
    target: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind.value,
            "objectId": self.object_id,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "target": self.target,
        }


@dataclass(frozen=True)
class KernelInfo:
    """The kernel of a commit: ``usr/lib/modules/KVER/vmlinuz`` and, when
    present, ``initramfs.img`` beside it.  Paths point at store objects: read
    them, never write to them."""

    kver: str
    vmlinuz: Path
    vmlinuz_id: str
    initramfs: Path | None
    initramfs_id: str | None


@dataclass(frozen=True)
class CommitListing:
    """One line of ``atoll store ls``."""

    commit: Commit
    refs: tuple[str, ...]
    partial: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.commit.id,
            "refs": list(self.refs),
            "image": self.commit.image,
            "version": self.commit.version,
            "timestamp": self.commit.timestamp,
            "manifestDigest": self.commit.manifest_digest,
            "parent": self.commit.parent,
            "partial": self.partial,
        }


class Store:
    """A content-addressed object store in a directory (see :mod:`atoll.store.format`)."""

    def __init__(self, path: Path, *, max_layer_size: int | None = None) -> None:
        self.path = path
        #: The most bytes one layer may expand to (store.json's ``max_layer_size``);
        #: imports also stop at the free space of the store's file system.
        self.max_layer_size = max_layer_size
        self.objects = path / OBJECTS_DIR
        self._lock_key = os.path.realpath(path)
        self._trees: dict[str, Tree] = {}

    # --- opening -------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path) -> Store:
        """Make a store at *path*, or open the one there (same version)."""
        path = Path(path)
        if (path / CONFIG_FILE).exists():
            return cls.open(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for sub in (
                REFS_DIR,
                TMP_DIR,
                f"{STATE_DIR}/{MANIFESTS_DIR}",
                f"{STATE_DIR}/{PARTIAL_DIR}",
                f"{STATE_DIR}/{CHAINS_DIR}",
            ):
                (path / sub).mkdir(parents=True, exist_ok=True)
            objects = path / OBJECTS_DIR
            objects.mkdir(exist_ok=True)
            for i in range(256):
                (objects / f"{i:02x}").mkdir(exist_ok=True)
            (path / LOCK_FILE).touch()
            # The layout is on disk before store.json says there is a store.
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                syncfs(fd)
            finally:
                os.close(fd)
            doc = {"format": FORMAT_NAME, "version": STORE_VERSION}
            write_atomic(path / CONFIG_FILE, json.dumps(doc).encode() + b"\n")
        except OSError as exc:
            raise from_oserror(exc, f"creating the object store {path}") from exc
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> Store:
        path = Path(path)
        config = path / CONFIG_FILE
        try:
            raw = config.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"no object store at {path}", hint="check the path, or create one first"
            ) from None
        except OSError as exc:
            raise from_oserror(exc, str(config)) from exc
        try:
            doc = json.loads(raw)
            version = doc["version"]
            if doc.get("format") != FORMAT_NAME or not isinstance(version, int):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise StoreCorruptError(f"{config}: not an atoll object store configuration") from None
        if version > STORE_VERSION:
            raise StoreVersionError(
                f"the object store {path} has format version {version}; "
                f"this atoll reads version {STORE_VERSION} and older",
                hint="use a newer atoll with this store",
            )
        max_layer_size = doc.get("max_layer_size")
        if max_layer_size is not None and (type(max_layer_size) is not int or max_layer_size < 1):
            raise InvalidInputError(
                f"{config}: max_layer_size must be a positive number of bytes",
                hint='write e.g. "max_layer_size": 8589934592, or remove the key',
            )
        return cls(path, max_layer_size=max_layer_size)

    # --- locking -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
        """Hold the store's flock.  Re-entrant within one thread, also across
        ``Store`` objects for the same directory; other threads and processes
        wait (or get LockedError with ``wait=False``)."""
        key = (self._lock_key, threading.get_ident())
        held = _HELD.get(key)
        upgraded = False
        if held is None:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                self._flock(fd, not shared, wait)
            except BaseException:
                os.close(fd)
                raise
            held = _HELD[key] = _Held(fd, not shared)
        elif not shared and not held.exclusive:
            self._flock(held.fd, True, wait)
            held.exclusive = upgraded = True
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                del _HELD[key]
                os.close(held.fd)
            elif upgraded:
                fcntl.flock(held.fd, fcntl.LOCK_SH)
                held.exclusive = False

    def _flock(self, fd: int, exclusive: bool, wait: bool) -> None:
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"the object store {self.path} is in use by another atoll process",
                hint="wait for it to finish and try again",
            ) from None

    # --- objects -------------------------------------------------------------------

    def object_path(self, oid: str, suffix: str = FILE_SUFFIX) -> Path:
        return self.objects / object_relpath(oid, suffix)

    def has_object(self, oid: str, suffix: str = FILE_SUFFIX) -> bool:
        return os.path.lexists(self.object_path(oid, suffix))

    def tree(self, tid: str) -> Tree:
        """A tree object, parsed and checked against its id."""
        cached = self._trees.get(tid)
        if cached is not None:
            return cached
        try:
            data = _read_all(f"{self.objects}/{tid[:2]}/{tid[2:]}.{TREE_SUFFIX}")
        except FileNotFoundError:
            raise StoreCorruptError(
                f"the object store {self.path} lacks tree {tid}",
                hint="run atoll store fsck --repair and import the image again",
            ) from None
        if content_id(data) != tid:
            raise StoreCorruptError(
                f"tree object {tid} in {self.path} is corrupt",
                hint="run atoll store fsck --repair and import the image again",
            )
        try:
            tree = decode_tree(data, f"tree {tid}")
        except ValueError as exc:
            raise StoreCorruptError(str(exc)) from None
        if len(self._trees) >= _TREE_CACHE:
            self._trees.clear()
        self._trees[tid] = tree
        return tree

    # --- commits -------------------------------------------------------------------

    def commit(self, commit_id: str) -> Commit:
        check_object_id(commit_id)
        path = self.object_path(commit_id, COMMIT_SUFFIX)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"commit {commit_id} is not in the object store {self.path}"
            ) from None
        except OSError as exc:
            raise from_oserror(exc, str(path)) from exc
        if content_id(data) != commit_id:
            raise StoreCorruptError(f"commit object {commit_id} in {self.path} is corrupt")
        try:
            return decode_commit(commit_id, data, f"commit {commit_id}")
        except ValueError as exc:
            raise StoreCorruptError(str(exc)) from None

    def has_commit(self, commit_id: str) -> bool:
        return is_object_id(commit_id) and self.has_object(commit_id, COMMIT_SUFFIX)

    def commit_ids(self) -> list[str]:
        suffix = f".{COMMIT_SUFFIX}"
        found = []
        for fan in sorted(list_names(self.objects)):
            try:
                names = list_names(self.objects / fan)
            except NotADirectoryError:
                continue
            found += [fan + n[: -len(suffix)] for n in names if n.endswith(suffix)]
        return sorted(found)

    def commits(self) -> list[Commit]:
        """Every commit in the store, newest first."""
        out = [self.commit(c) for c in self.commit_ids()]
        return sorted(out, key=lambda c: (c.timestamp, c.id), reverse=True)

    def is_partial(self, commit_id: str) -> bool:
        return (self.path / STATE_DIR / PARTIAL_DIR / commit_id).exists()

    def mark_partial(self, commit_id: str) -> None:
        write_atomic(self.path / STATE_DIR / PARTIAL_DIR / commit_id, b"")

    def partial_commits(self) -> list[str]:
        folder = self.path / STATE_DIR / PARTIAL_DIR
        return sorted(n for n in list_names(folder) if is_object_id(n)) if folder.is_dir() else []

    # --- refs ----------------------------------------------------------------------

    def ref(self, name: str) -> str | None:
        path = self.path / REFS_DIR / check_ref_name(name)
        try:
            path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise from_oserror(exc, str(path)) from exc
        text = _read_ref(path)
        if not is_object_id(text):
            raise StoreCorruptError(f"ref {name} in {self.path} does not hold a commit id")
        return text

    def refs(self) -> dict[str, str]:
        """Every ref and the commit it names, sorted by name."""
        root = self.path / REFS_DIR
        out: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            # A symlink to a directory is not walked, and is no ref either: it shows as garbage.
            links = [d for d in dirnames if Path(dirpath, d).is_symlink()]
            for fname in [*filenames, *links]:
                if fname.startswith("."):
                    continue
                path = Path(dirpath, fname)
                name = str(path.relative_to(root))
                out[name] = _read_ref(path)
        return dict(sorted(out.items()))

    def set_ref(self, name: str, commit_id: str | None) -> None:
        """Point ref *name* at a commit (which must exist), or delete it (None)."""
        check_ref_name(name)
        path = self.path / REFS_DIR / name
        with self.lock():
            if commit_id is None:
                try:
                    path.unlink()
                except FileNotFoundError:
                    return
                fsync_dir(path.parent)
                self._prune_ref_dirs(path.parent)
                return
            check_object_id(commit_id)
            if not self.has_commit(commit_id):
                raise NotFoundError(f"commit {commit_id} is not in the object store {self.path}")
            try:
                if not path.parent.is_dir():
                    path.parent.mkdir(parents=True)
                    fsync_dir(self.path / REFS_DIR)
            except OSError as exc:
                raise InvalidInputError(f"ref {name}: {exc.strerror}") from None
            write_atomic(path, f"{commit_id}\n".encode())

    def _prune_ref_dirs(self, folder: Path) -> None:
        root = self.path / REFS_DIR
        while folder != root:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # --- imports -------------------------------------------------------------------

    #: :func:`atoll.store.importer.import_image`: ``store.import_image(source, …)``.
    import_image = _importer.import_image

    def remove_stale_staging(self) -> None:
        """Delete staging directories of imports that died (call with the lock held)."""
        tmp = self.path / TMP_DIR
        for name in list_names(tmp) if tmp.is_dir() else ():
            if name.startswith(STAGING_PREFIX):
                remove_staging(tmp / name)

    # --- reading commits -----------------------------------------------------------

    def _file_entry(self, path: str, oid: str) -> Entry:
        obj = self.object_path(oid)
        try:
            st = os.lstat(obj)
            target = os.readlink(obj) if stat.S_ISLNK(st.st_mode) else None  # noqa: PTH115
        except FileNotFoundError:
            raise StoreCorruptError(
                f"the object store {self.path} lacks file object {oid} ({path})",
                hint="run atoll store fsck --repair and import the image again",
            ) from None
        info = info_from_stat(st, target)
        return Entry(
            path, KIND_OF_TYPE[info.ftype], oid, info.mode, info.uid, info.gid, info.size, target
        )

    def _resolve(self, commit_id: str, path: str, follow: bool) -> Entry | None:
        commit = self.commit(commit_id)
        pending = [p for p in path.split("/") if p][::-1]
        stack: list[tuple[str, str, DirMeta]] = []  # (name, tree id, meta) below the root
        hops = 0
        while pending:
            comp = pending.pop()
            if comp == ".":
                continue
            if comp == "..":
                if stack:
                    stack.pop()
                continue
            tid = stack[-1][1] if stack else commit.tree
            tree = self.tree(tid)
            sub = tree.dirs.get(comp)
            if sub is not None:
                stack.append((comp, sub[0], sub[1]))
                continue
            oid = tree.files.get(comp)
            if oid is None:
                return None
            here = "/".join([*(s[0] for s in stack), comp])
            entry = self._file_entry(here, oid)
            if entry.kind is EntryKind.SYMLINK and (pending or follow):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    return None
                target = entry.target or ""
                if target.startswith("/"):
                    stack.clear()
                pending.extend([p for p in target.split("/") if p][::-1])
                continue
            if pending:
                return None
            return entry
        if not stack:
            meta, tid = commit.root, commit.tree
        else:
            _, tid, meta = stack[-1]
        here = "/".join(s[0] for s in stack)
        return Entry(here, EntryKind.DIR, tid, meta.mode, meta.uid, meta.gid, 0)

    def lookup(self, commit_id: str, path: str, *, follow: bool = False) -> Entry | None:
        """The entry at *path* in the commit, or None.  Symlinks in the middle
        of the path are followed inside the commit (as in a chroot); the last
        component only with *follow*."""
        return self._resolve(commit_id, path, follow)

    def list_dir(self, commit_id: str, path: str = "") -> list[Entry]:
        """The entries of a directory of the commit, sorted by name."""
        entry = self._resolve(commit_id, path, True)
        if entry is None:
            raise NotFoundError(f"{path or '/'}: no such directory in commit {commit_id}")
        if entry.kind is not EntryKind.DIR:
            raise InvalidInputError(f"{path}: not a directory in commit {commit_id}")
        tree = self.tree(entry.object_id)
        prefix = f"{entry.path}/" if entry.path else ""
        out = [
            Entry(prefix + name, EntryKind.DIR, tid, meta.mode, meta.uid, meta.gid, 0)
            for name, (tid, meta) in tree.dirs.items()
        ]
        out += [self._file_entry(prefix + name, oid) for name, oid in tree.files.items()]
        return sorted(out, key=lambda e: e.path)

    def read_file(self, commit_id: str, path: str, *, limit: int = READ_FILE_LIMIT) -> bytes:
        """The content of a regular file of the commit (symlinks followed)."""
        entry = self._resolve(commit_id, path, True)
        if entry is None:
            raise NotFoundError(f"{path}: no such file in commit {commit_id}")
        if entry.kind is not EntryKind.FILE:
            raise InvalidInputError(f"{path}: not a regular file in commit {commit_id}")
        if entry.size > limit:
            raise InvalidInputError(f"{path}: {entry.size} bytes is more than read_file reads")
        return self.object_path(entry.object_id).read_bytes()

    def kernel(self, commit_id: str) -> KernelInfo | None:
        """The kernel under ``usr/lib/modules/*/vmlinuz`` (the highest version
        if there are several), with ``initramfs.img`` when it is there."""
        modules = self._resolve(commit_id, "usr/lib/modules", True)
        if modules is None or modules.kind is not EntryKind.DIR:
            return None
        found: list[tuple[list[Any], str, Entry]] = []
        for kver in self.tree(modules.object_id).dirs:
            vmlinuz = self._resolve(commit_id, f"{modules.path}/{kver}/vmlinuz", True)
            if vmlinuz is not None and vmlinuz.kind is EntryKind.FILE:
                found.append((_version_key(kver), kver, vmlinuz))
        if not found:
            return None
        _, kver, vmlinuz = max(found, key=lambda f: f[0])
        initrd = self._resolve(commit_id, f"{modules.path}/{kver}/initramfs.img", True)
        if initrd is not None and initrd.kind is not EntryKind.FILE:
            initrd = None
        return KernelInfo(
            kver=kver,
            vmlinuz=self.object_path(vmlinuz.object_id),
            vmlinuz_id=vmlinuz.object_id,
            initramfs=self.object_path(initrd.object_id) if initrd else None,
            initramfs_id=initrd.object_id if initrd else None,
        )

    # --- checkout, fsck, gc, ls ----------------------------------------------------

    # The work is done by the modules of each; these are the same functions.
    checkout = _checkout.checkout
    checkout_subtree = _checkout.checkout_subtree
    fsck = _fsck.fsck
    gc = _gc.gc

    def ls(self) -> list[CommitListing]:
        """Every commit, newest first, with the refs naming it."""
        refs = self.refs()
        partial = set(self.partial_commits())
        by_commit: dict[str, list[str]] = {}
        for name, cid in refs.items():
            by_commit.setdefault(cid, []).append(name)
        return [
            CommitListing(c, tuple(by_commit.get(c.id, ())), c.id in partial)
            for c in self.commits()
        ]


def _read_ref(path: Path) -> str:
    """The text of a ref file; "" for what cannot be a ref (not a small regular
    file of ASCII text), which callers then report as not holding a commit id."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > _REF_MAX:
            return ""
        return path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_all(path: str) -> bytes:
    """A small file's bytes, in as few system calls as Python allows."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _version_key(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]
