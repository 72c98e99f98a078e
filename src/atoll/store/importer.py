"""Import of an OCI image into the store: its layers, in order, become one commit.

Each layer streams through :class:`~atoll.store.tarstream.LayerFeed` (fetch,
digest check, decompression, diff_id check) into a tar reader.  Entries are
applied to an in-memory model of the image's tree: directories are dicts of
entries, files are their object ids (contents go straight into objects, so
memory grows with the number of paths, never with their size).

A layer is first read into a tree of its own, then merged onto the image so far,
the way overlay file systems stack layers (OCI image-spec, layer.md):

* ``DIR/.wh.NAME`` removes NAME of lower layers from DIR;
* ``DIR/.wh..wh..opq`` makes DIR opaque: nothing of DIR in lower layers stays;
* whiteouts never hide entries of their own layer, wherever they sit in the tar;
* a directory the layer does not list itself keeps the metadata it had below.

Refused, with :class:`~atoll.errors.LayerError` naming the layer and the entry:
absolute paths (``./`` in front is fine), ``..`` components, entries whose
parent is a symlink or a file in the tree, hardlinks to nothing (or to a
directory), device nodes and fifos unless allowed, paths deeper than
:data:`MAX_DEPTH`.

Nothing becomes visible before every layer has been read and verified: objects
are staged (see :mod:`atoll.store.objects`), then published with the commit.

Layers shared with an image imported before are not read at all.  After a
layer the merged tree may be written (only the directories changed since the
last time are encoded again), and after the commit a layer-chain record names
it by the layers' OCI ChainID (see :mod:`atoll.store.format`).  The tree is
written after the first and the last layer, and after any other layer when
the directories to encode again hold at most :data:`CHAIN_FACTOR` times the
entries read since the last write, plus :data:`CHAIN_SLACK`: what the records
cost stays linear in the entries read and the layers, however many layers
there are (writing after every layer made an image of n one-file layers cost
n²/2 tree entries).  Layers with many files get a record each; runs of tiny
layers get records ever further apart.  An import starts from the
longest chain of its own layers that has a record whose trees check out
against their ids and whose file objects are all there, and fetches only the
layers above it; the source is never asked for the others.  The ChainIDs come
from the image config's diff_ids, and the config's digest was checked against
the manifest: a record stands for exactly the bytes those layers would give.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atoll.errors import (
    DigestMismatchError,
    LayerError,
    ManifestError,
    StoreCorruptError,
    from_oserror,
)
from atoll.faults import crashpoint
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, ImageManifest, layer_compression, parse_config
from atoll.oci.transports.base import ImageSource
from atoll.phases import PhaseClock
from atoll.progress import NullProgress, ProgressSink
from atoll.store.chains import ChainRecord, chain_ids, read_chain_record, write_chain_record
from atoll.store.format import (
    COMMIT_SUFFIX,
    DEFAULT_DIR_META,
    FILE_SUFFIX,
    TREE_SUFFIX,
    DirMeta,
    FileType,
    content_id,
    encode_commit,
    encode_tree,
    file_header,
    file_id,
)
from atoll.store.importrecords import find_import, imported, recommit
from atoll.store.layerrecords import encode_layer_record, read_layer_record, write_layer_record
from atoll.store.objects import Staging, XattrError
from atoll.store.tarstream import (
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    ByteReader,
    ExpandLimit,
    LayerFeed,
    TarEntry,
    TarReader,
    verify_blob,
)

if TYPE_CHECKING:
    from atoll.store.partial import Feed
    from atoll.store.store import Store

#: Gives a layer's uncompressed tar another way than by downloading the blob
#: (:meth:`atoll.store.partial.PartialPuller.feed`), or None to download it.
LayerFeeds = Callable[[Descriptor, Digest, str], "Feed | None"]

#: Files up to this size are read into memory, hashed and only then written
#: (and not written at all when the store has them); larger ones stream.
SMALL_FILE = 1 << 20
#: Deepest path accepted in a layer (the tree code recurses once per level).
MAX_DEPTH = 256
_NAME_MAX = 255
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_SPECIAL = {CHAR: FileType.CHAR, BLOCKDEV: FileType.BLOCK, FIFO: FileType.FIFO}
#: A layer-chain record is written when the tree entries to encode again are
#: at most CHAIN_FACTOR times the tar entries read since the last record, plus
#: CHAIN_SLACK: records then cost O(entries + layers) tree entries in all.
CHAIN_FACTOR = 4
CHAIN_SLACK = 64


@dataclass(frozen=True)
class ImportStats:
    layers: int
    #: File entries (regular files, symlinks, hardlinks, devices) read from the layers.
    files_total: int
    #: Of those, files whose object was not in the store yet (and was written).
    files_new: int
    #: Layer bytes read from the source (compressed, as stored).
    bytes_fetched: int
    #: Bytes of new objects written to the store (file contents, trees, commit).
    bytes_written: int
    elapsed: float
    #: True when the image was imported before: no layer was read.
    reused: bool = False
    #: Layers not read because an import before had applied the same chain of
    #: layers (their files are not in files_total).
    layers_reused: int = 0
    #: Layers not read because the store had a layer record of each
    #: (:mod:`atoll.store.layerrecords`): applied from it instead.
    layers_replayed: int = 0
    #: Layer bytes (compressed, as stored) not fetched thanks to layers_reused
    #: and layers_replayed.
    bytes_skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "filesTotal": self.files_total,
            "filesNew": self.files_new,
            "bytesFetched": self.bytes_fetched,
            "bytesWritten": self.bytes_written,
            "elapsed": round(self.elapsed, 3),
            "reused": self.reused,
            "layersReused": self.layers_reused,
            "layersReplayed": self.layers_replayed,
            "bytesSkipped": self.bytes_skipped,
        }


@dataclass(frozen=True)
class ImportResult:
    commit_id: str
    stats: ImportStats

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit_id, **self.stats.to_json()}


# --- the tree model ----------------------------------------------------------------------


class _Leaf:
    __slots__ = ("ftype", "oid")

    def __init__(self, oid: str, ftype: FileType) -> None:
        self.oid = oid
        self.ftype = ftype


class _Dir:
    __slots__ = ("entries", "explicit", "meta", "opaque", "tid", "whiteouts")

    def __init__(self, meta: DirMeta, explicit: bool) -> None:
        self.entries: dict[str, _Dir | _Leaf] = {}
        self.meta = meta
        self.explicit = explicit
        self.opaque = False
        self.whiteouts: set[str] | None = None
        #: The id of the tree object of this directory as it is now (None: not
        #: written yet, or changed since).
        self.tid: str | None = None


def _merge(lower: _Dir, upper: _Dir, dirty: list[_Dir]) -> None:
    """Stack *upper* (one layer's tree) onto *lower* (the image so far);
    directories of *lower* whose tree was written before go on *dirty*."""
    # Every directory a layer changes is visited from the root down: each on
    # the way has its tree written again.
    if lower.tid is not None:
        dirty.append(lower)
    lower.tid = None
    if upper.opaque:
        lower.entries.clear()
    elif upper.whiteouts:
        for name in upper.whiteouts:
            lower.entries.pop(name, None)
    if upper.explicit:
        lower.meta = upper.meta
    entries = lower.entries
    for name, child in upper.entries.items():
        if type(child) is _Dir:
            below = entries.get(name)
            if type(below) is _Dir:
                _merge(below, child, dirty)
                continue
        entries[name] = child


class _LayerTree:
    """One layer's entries, with the image below it for checks and hardlinks."""

    def __init__(self, lower: _Dir | None) -> None:
        self.lower = lower
        self.root = _Dir(lower.meta if lower else DEFAULT_DIR_META, explicit=False)

    def parent(self, parts: list[str], entry: str, where: str) -> _Dir:
        """The directory that will hold *parts*[-1], made if the layer does not
        list it (an implied directory), refusing paths through non-directories."""
        node = self.root
        low = self.lower
        for i in range(len(parts) - 1):
            comp = parts[i]
            child = node.entries.get(comp)
            low_child: _Dir | _Leaf | None = None
            if (
                low is not None
                and not node.opaque
                and (not node.whiteouts or comp not in node.whiteouts)
            ):
                low_child = low.entries.get(comp)
            if child is None:
                if low_child is not None and type(low_child) is not _Dir:
                    _refuse_parent(low_child, parts[: i + 1], entry, where)
                child = _Dir(low_child.meta if low_child else DEFAULT_DIR_META, explicit=False)  # type: ignore[union-attr]
                node.entries[comp] = child
            elif type(child) is not _Dir:
                _refuse_parent(child, parts[: i + 1], entry, where)
            node = child  # type: ignore[assignment]
            low = low_child if type(low_child) is _Dir else None
        return node

    def find(self, parts: list[str]) -> _Dir | _Leaf | None:
        """The node at *parts* as the image will be after this layer."""
        node: _Dir | None = self.root
        low = self.lower
        last = len(parts) - 1
        for i, comp in enumerate(parts):
            child = node.entries.get(comp) if node is not None else None
            low_child = None
            if low is not None and (
                node is None
                or (not node.opaque and not (node.whiteouts and comp in node.whiteouts))
            ):
                low_child = low.entries.get(comp)
            if i == last:
                return child if child is not None else low_child
            if child is not None and type(child) is not _Dir:
                return None
            node = child if type(child) is _Dir else None
            low = low_child if type(low_child) is _Dir else None
            if node is None and low is None:
                return None
        return self.root


def _refuse_parent(node: _Dir | _Leaf, parts: list[str], entry: str, where: str) -> None:
    what = "the symlink" if getattr(node, "ftype", None) is FileType.SYMLINK else "the file"
    raise LayerError(
        f"{where}: entry {entry!r} goes through {what} {'/'.join(parts)!r}",
        hint="a layer may not write through a symlink or into a file",
    )


def _split(path: str, entry: str, where: str) -> list[str]:
    if path.startswith("/"):
        raise LayerError(f"{where}: entry {entry!r} has an absolute path")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise LayerError(f"{where}: entry {entry!r} has a path with '..'")
    if len(parts) > MAX_DEPTH:
        raise LayerError(f"{where}: entry {entry!r} is nested deeper than {MAX_DEPTH} levels")
    if "\x00" in path:
        raise LayerError(f"{where}: entry {entry!r} has a NUL byte in its path")
    # A name of up to 63 characters is at most 252 bytes: only longer ones are measured.
    if len(path) > 63 and any(len(os.fsencode(p)) > _NAME_MAX for p in parts):
        raise LayerError(f"{where}: entry {entry!r} has a name longer than {_NAME_MAX} bytes")
    return parts


def _xattrs(entry: TarEntry, where: str) -> tuple[tuple[str, bytes], ...]:
    if not entry.xattrs:
        return ()
    for name in entry.xattrs:
        if not name or "\x00" in name:
            raise LayerError(f"{where}: entry {entry.path!r} has an invalid xattr name")
    return tuple(sorted(entry.xattrs.items()))


# --- applying layers ---------------------------------------------------------------------


class _Importer:
    def __init__(self, staging: Staging, allow_devices: bool) -> None:
        self.staging = staging
        self.allow_devices = allow_devices
        self.root: _Dir | None = None
        self.files_total = 0
        self.files_new = 0
        self.bytes_fetched = 0
        #: Whether the layers so far held device nodes or fifos.
        self.special = False
        self._leaves: dict[str, _Leaf] = {}
        #: Tar entries read since the trees were last written.
        self._entries_since = 0
        #: Directories written before and changed since.
        self._dirty: list[_Dir] = []

    def start_from(self, store: Store, chains: list[str]) -> int:
        """Start from the longest prefix of *chains* (ChainIDs, one per layer)
        with a usable record; the number of layers it covers (0: none)."""
        for count in range(len(chains), 0, -1):
            record = read_chain_record(store.path, chains[count - 1])
            if record is None or record.layers != count:
                continue
            if record.special and not self.allow_devices:
                continue
            try:
                root = self._load(store, record.tree, record.root, 0)
            except (StoreCorruptError, OSError):
                # Missing or corrupt objects (fsck --repair, an old gc): read the layers.
                self._leaves.clear()
                continue
            self.root = root
            self.special = record.special
            return count
        return 0

    def _load(self, store: Store, tid: str, meta: DirMeta, depth: int) -> _Dir:
        """The tree *tid* as the in-memory model; every tree checked against
        its id, every file object's presence (and type) looked up."""
        if depth > MAX_DEPTH:
            raise StoreCorruptError(f"tree {tid} is nested deeper than {MAX_DEPTH} levels")
        tree = store.tree(tid)
        node = _Dir(meta, explicit=False)
        entries = node.entries
        for name, (sub, sub_meta) in tree.dirs.items():
            entries[name] = self._load(store, sub, sub_meta, depth + 1)
        leaves = self._leaves
        for name, oid in tree.files.items():
            leaf = leaves.get(oid)
            if leaf is None:
                ftype = self.staging.stored_file_type(oid)
                if ftype is None:
                    raise StoreCorruptError(f"file object {oid} of tree {tid} is missing")
                leaf = leaves[oid] = _Leaf(oid, ftype)
            entries[name] = leaf
        node.tid = tid
        self.staging.know(tid, TREE_SUFFIX)
        return node

    def apply(self, feed: LayerFeed | Feed, where: str) -> list[tuple[TarEntry, str | None]]:
        """Read one layer onto the tree; its entries, each regular file with
        its object (what a layer record keeps)."""
        layer = _LayerTree(self.root)
        tar = TarReader(ByteReader(iter(feed)), where)
        read: list[tuple[TarEntry, str | None]] = []
        for entry in tar.entries():
            self._entries_since += 1
            leaf = self._entry(layer, entry, where, lambda e: self._regular(tar, e, where))
            read.append((entry, leaf.oid if leaf is not None and entry.kind == REGULAR else None))
        # Read what follows the end of the archive: the digests cover it too.
        for _ in feed:
            pass
        self._stack(layer)
        return read

    def replay(self, recorded: list[tuple[TarEntry, str | None]], where: str) -> bool:
        """Apply a layer from its record; False (and nothing changed) when a
        file object it names is not in the store."""
        leaves: dict[str, _Leaf] = {}
        for entry, oid in recorded:
            if entry.kind == REGULAR:
                if oid is None:
                    if entry.path.rstrip("/").rpartition("/")[2].startswith(_WHITEOUT):
                        continue
                    return False
                ftype = self.staging.stored_file_type(oid)
                if ftype is not FileType.REGULAR:
                    return False
                leaves[entry.path] = self._leaf(oid, ftype)
        layer = _LayerTree(self.root)
        for entry, _ in recorded:
            self._entries_since += 1
            self._entry(layer, entry, where, lambda e: leaves[e.path])
        self._stack(layer)
        return True

    def _stack(self, layer: _LayerTree) -> None:
        if self.root is None:
            self.root = layer.root
        else:
            _merge(self.root, layer.root, self._dirty)

    def worth_recording(self) -> bool:
        """Whether writing the trees now costs little enough for a chain record
        (see the module docstring)."""
        cost = sum(len(d.entries) + 1 for d in self._dirty if d.tid is None)
        return cost <= CHAIN_FACTOR * self._entries_since + CHAIN_SLACK

    def _entry(
        self, layer: _LayerTree, e: TarEntry, where: str, regular: Callable[[TarEntry], _Leaf]
    ) -> _Leaf | None:
        parts = _split(e.path, e.path, where)
        kind = e.kind
        if not parts:
            if kind == DIRECTORY:
                layer.root.meta = DirMeta(e.mode, e.uid, e.gid, _xattrs(e, where))
                layer.root.explicit = True
                return None
            raise LayerError(f"{where}: entry {e.path!r} replaces the root directory")
        parent = layer.parent(parts, e.path, where)
        name = parts[-1]
        if name.startswith(_WHITEOUT):
            if name == _OPAQUE:
                parent.opaque = True
            elif not name.startswith(".wh..wh."):
                if parent.whiteouts is None:
                    parent.whiteouts = set()
                parent.whiteouts.add(name[len(_WHITEOUT) :])
            return None
        if kind == DIRECTORY:
            meta = DirMeta(e.mode, e.uid, e.gid, _xattrs(e, where))
            existing = parent.entries.get(name)
            if type(existing) is _Dir:
                existing.meta = meta
                existing.explicit = True
            else:
                parent.entries[name] = _Dir(meta, explicit=True)
            return None
        self.files_total += 1
        try:
            if kind == REGULAR:
                leaf = regular(e)
            elif kind == SYMLINK:
                leaf = self._symlink(e, where)
            elif kind == HARDLINK:
                target = layer.find(_split(e.linkname, e.path, where))
                if target is None:
                    raise LayerError(
                        f"{where}: entry {e.path!r} is a hardlink to {e.linkname!r}, "
                        "which is not in the image"
                    )
                if type(target) is _Dir:
                    raise LayerError(
                        f"{where}: entry {e.path!r} is a hardlink to the directory {e.linkname!r}"
                    )
                leaf = target  # type: ignore[assignment]
            else:
                leaf = self._special(e, where)
        except XattrError as exc:
            raise LayerError(f"{where}: entry {e.path!r}: {exc}") from None
        parent.entries[name] = leaf
        return leaf

    def _leaf(self, oid: str, ftype: FileType) -> _Leaf:
        leaf = self._leaves.get(oid)
        if leaf is None:
            leaf = self._leaves[oid] = _Leaf(oid, ftype)
        return leaf

    def _regular(self, tar: TarReader, e: TarEntry, where: str) -> _Leaf:
        xattrs = _xattrs(e, where)
        header = file_header(FileType.REGULAR, e.mode, e.uid, e.gid, e.size, 0, b"", xattrs)
        staging = self.staging
        if e.size <= SMALL_FILE:
            data = tar.content()
            oid = file_id(header, data)
            if not staging.has(oid, FILE_SUFFIX):
                staging.add_regular(oid, e.mode, e.uid, e.gid, xattrs, data)
                self.files_new += 1
        else:
            oid, written = staging.add_large(
                header, tar.content_pieces(), e.mode, e.uid, e.gid, xattrs
            )
            self.files_new += written
        return self._leaf(oid, FileType.REGULAR)

    def _symlink(self, e: TarEntry, where: str) -> _Leaf:
        if not e.linkname or "\x00" in e.linkname:
            raise LayerError(f"{where}: entry {e.path!r} is a symlink with an empty target")
        xattrs = _xattrs(e, where)
        header = file_header(
            FileType.SYMLINK, 0o777, e.uid, e.gid, 0, 0, os.fsencode(e.linkname), xattrs
        )
        oid = file_id(header)
        if not self.staging.has(oid, FILE_SUFFIX):
            self.staging.add_symlink(oid, e.linkname, e.uid, e.gid, xattrs)
            self.files_new += 1
        return self._leaf(oid, FileType.SYMLINK)

    def _special(self, e: TarEntry, where: str) -> _Leaf:
        ftype = _SPECIAL[e.kind]
        if not self.allow_devices:
            what = "a fifo" if ftype is FileType.FIFO else "a device node"
            raise LayerError(
                f"{where}: entry {e.path!r} is {what}, which images may not contain",
                hint="device nodes belong in /dev at run time; "
                "allow_devices=True imports them anyway",
            )
        self.special = True
        rdev = os.makedev(e.devmajor, e.devminor) if ftype is not FileType.FIFO else 0
        xattrs = _xattrs(e, where)
        oid = file_id(file_header(ftype, e.mode, e.uid, e.gid, 0, rdev, b"", xattrs))
        if not self.staging.has(oid, FILE_SUFFIX):
            self.staging.add_special(oid, ftype, e.mode, e.uid, e.gid, rdev, xattrs)
            self.files_new += 1
        return self._leaf(oid, ftype)

    def write_trees(self) -> tuple[str, DirMeta]:
        root = self.root or _Dir(DEFAULT_DIR_META, explicit=False)
        self._entries_since = 0
        self._dirty.clear()
        return self._write_tree(root), root.meta

    def _write_tree(self, node: _Dir) -> str:
        if node.tid is not None:
            return node.tid
        dirs: dict[str, tuple[str, DirMeta]] = {}
        files: dict[str, str] = {}
        for name, child in node.entries.items():
            if type(child) is _Dir:
                dirs[name] = (self._write_tree(child), child.meta)
            else:
                files[name] = child.oid  # type: ignore[union-attr]
        data = encode_tree(dirs, files)
        tid = content_id(data)
        if not self.staging.has(tid, TREE_SUFFIX):
            self.staging.add_metadata(tid, TREE_SUFFIX, data)
        node.tid = tid
        return tid


# --- the import --------------------------------------------------------------------------


def _timestamp(created: str | None) -> int:
    if created:
        text = re.sub(r"(\.\d{6})\d+", r"\1", created.strip())
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            return int(when.timestamp())
    return int(time.time())


def import_image(
    store: Store,
    source: ImageSource,
    manifest: ImageManifest,
    config_raw: bytes,
    *,
    image: str,
    manifest_digest: Digest,
    allow_devices: bool = False,
    progress: ProgressSink | None = None,
    ref: str | None = None,
    layer_feeds: LayerFeeds | None = None,
    clock: PhaseClock | None = None,
) -> ImportResult:
    """See :meth:`atoll.store.Store.import_image`; *clock* counts the layers'
    fetch, decompression and digest checks."""
    start = time.monotonic()
    where = source.description
    config_digest = manifest.config.digest
    if Digest.of(config_raw, config_digest.algorithm) != config_digest:
        raise DigestMismatchError(
            f"{where}: image config {config_digest} does not match its digest"
        )
    config = parse_config(config_raw, where=f"{where}: config")
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{where}: the manifest has {len(manifest.layers)} layers "
            f"but the config lists {len(config.diff_ids)} diff_ids"
        )
    progress = progress or NullProgress()
    with store.lock():
        store.remove_stale_staging()
        parent = _parent(store, ref, manifest_digest)
        reused = find_import(store, manifest_digest)
        if reused is not None:
            commit_id = recommit(store, reused, image=image, parent=parent)
            if ref is not None:
                store.set_ref(ref, commit_id)
            stats = ImportStats(len(manifest.layers), 0, 0, 0, 0, time.monotonic() - start, True)
            return ImportResult(commit_id, stats)
        ok = False
        progress.begin("import", f"Importing {image}", image, len(manifest.layers))
        staging: Staging | None = None
        chains = chain_ids([str(d) for d in config.diff_ids])
        records: list[ChainRecord] = []
        layer_records: list[tuple[str, bytes]] = []
        replayed = replayed_bytes = 0
        try:
            staging = Staging(store.path)
            importer = _Importer(staging, allow_devices)
            skipped = importer.start_from(store, chains) if chains else 0
            for i, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
                ident = str(desc.digest)
                progress.subtask(ident, "layer", f"layer {desc.digest.short}", desc.size)
                if i < skipped:
                    progress.done(ident, cached=True)
                    continue
                recorded = read_layer_record(store.path, str(diff_id))
                if recorded is not None and importer.replay(
                    recorded, f"{where}: layer {desc.digest}"
                ):
                    replayed += 1
                    replayed_bytes += desc.size
                    progress.done(ident, cached=True)
                else:
                    limit = expand_limit(store)
                    read = _apply_layer(
                        importer, source, desc, diff_id, where, progress, limit, layer_feeds, clock
                    )
                    layer_records.append((str(diff_id), encode_layer_record(str(diff_id), read)))
                    progress.done(ident)
                if chains and (i == len(chains) - 1 or importer.worth_recording()):
                    layer_tree, layer_root = importer.write_trees()
                    records.append(
                        ChainRecord(chains[i], i + 1, layer_tree, layer_root, importer.special)
                    )
            tree, root_meta = importer.write_trees()
            commit_id, data = encode_commit(
                parent=parent,
                timestamp=_timestamp(config.created),
                tree=tree,
                root=root_meta,
                image=image,
                manifest_digest=str(manifest_digest),
                config_digest=str(config_digest),
                version=config.version,
                subject=f"Import of {image}" + (f" {config.version}" if config.version else ""),
                diff_ids=[str(d) for d in config.diff_ids],
            )
            if not staging.has(commit_id, COMMIT_SUFFIX):
                staging.add_metadata(commit_id, COMMIT_SUFFIX, data)
            staging.publish()
            crashpoint("store-import-committed")
            imported(store, manifest_digest, commit_id, tree)
            for record in records:
                write_chain_record(store.path, record)
                crashpoint("store-import-chain-written")
            for layer_diff_id, data in layer_records:
                write_layer_record(store.path, layer_diff_id, data)
            if ref is not None:
                store.set_ref(ref, commit_id)
            ok = True
        except OSError as exc:
            raise from_oserror(exc, f"the object store {store.path}") from exc
        finally:
            if staging is not None:
                staging.close()
            progress.end(ok)
    stats = ImportStats(
        layers=len(manifest.layers),
        files_total=importer.files_total,
        files_new=importer.files_new,
        bytes_fetched=importer.bytes_fetched,
        bytes_written=staging.bytes_written,
        elapsed=time.monotonic() - start,
        layers_reused=skipped,
        bytes_skipped=sum(desc.size for desc in manifest.layers[:skipped]) + replayed_bytes,
        layers_replayed=replayed,
    )
    return ImportResult(commit_id, stats)


def expand_limit(store: Store) -> ExpandLimit:
    """How far the next layer may expand: the free space of the store's file
    system, or the store's max_layer_size when that is smaller.  The expanded
    size counts every byte of the tar stream, so a layer whose files the store
    has already is held to it too: the check is meant to stop a decompression
    bomb early, not to predict the space an import needs."""
    try:
        st = os.statvfs(store.path)
    except OSError as exc:
        raise from_oserror(exc, f"the object store {store.path}") from exc
    free = st.f_bavail * st.f_frsize
    cap = store.max_layer_size
    if cap is not None and cap <= free:
        return ExpandLimit(cap, str(store.path), free_space=False)
    return ExpandLimit(free, str(store.path), free_space=True)


def _parent(store: Store, ref: str | None, manifest_digest: Digest) -> str | None:
    """The commit *ref* names now; when that is this image already, its parent
    (importing an image again under the same ref gives the same commit)."""
    current = store.ref(ref) if ref is not None else None
    if current is None or not store.has_commit(current):
        return None
    commit = store.commit(current)
    return commit.parent if commit.manifest_digest == str(manifest_digest) else current


def _apply_layer(
    importer: _Importer,
    source: ImageSource,
    desc: Descriptor,
    diff_id: Digest,
    where: str,
    progress: ProgressSink,
    limit: ExpandLimit | None,
    layer_feeds: LayerFeeds | None = None,
    clock: PhaseClock | None = None,
) -> list[tuple[TarEntry, str | None]]:
    layer_where = f"{where}: layer {desc.digest}"
    other = layer_feeds(desc, diff_id, layer_where) if layer_feeds is not None else None
    feed = other or LayerFeed(
        source, desc, layer_compression(desc.media_type), diff_id, where, progress, limit, clock
    )
    try:
        return importer.apply(feed, layer_where)
    except LayerError:
        feed.close()
        # A parse error in a blob that is not what the manifest says is a digest
        # problem (a corrupt download), not a malformed layer: say so.
        verify_blob(source, desc, where)
        raise
    finally:
        feed.close()
        importer.bytes_fetched += feed.fetched
