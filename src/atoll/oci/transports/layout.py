"""``oci:DIR[:REF]``: an OCI image layout directory (OCI image-spec, image-layout.md).

On disk::

    DIR/
    ├── oci-layout           {"imageLayoutVersion": "1.0.0"}
    ├── index.json           {"schemaVersion":2,"mediaType":"…image.index.v1+json",
    │                         "manifests":[DESCRIPTOR, …]}
    └── blobs/
        └── sha256/
            ├── <hex>        a manifest, index, config or layer: bytes whose sha256 is <hex>
            └── .atoll-tmp-… a blob being written: never referenced, removed on failure

Each DESCRIPTOR in ``index.json`` names one image (a manifest or an index).
Its annotation ``org.opencontainers.image.ref.name`` is the REF of
``oci:DIR:REF``; a DESCRIPTOR without it is an image with no name.

Reading: with REF, the first entry carrying that name; without REF, the only
entry of the layout (an error listing the names if there are several).

Writing, as skopeo 1.9.3 (containers/image) does it, checked by experiment:

* ``oci:DIR:REF`` removes the entries named REF, then the new entry replaces
  an entry *without* a name and with the same digest, or is appended.
* ``oci:DIR`` (no REF) adds an entry without a name, again replacing a
  nameless entry with the same digest, so repeating a copy adds nothing.
* skopeo 1.9.3 writes ``index.json`` without ``mediaType``; atoll writes it
  (image-spec 1.1 recommends it, newer skopeo writes it, both read either).

Atomicity: a new layout is written into a temporary sibling of DIR, renamed
into place at commit; in an existing layout blobs go straight into
``blobs/`` (verified first), and ``index.json`` is replaced atomically at
commit only, under an flock on DIR that serialises atoll writers.
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll import strictjson
from atoll.errors import (
    AtollError,
    InvalidInputError,
    InvalidReferenceError,
    ManifestError,
    NotFoundError,
    UnsupportedError,
    from_oserror,
)
from atoll.fsutil import fsync_dir, fsync_tree, locked_dir, remove_tree, temp_sibling, write_atomic
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import (
    MANIFEST_TYPES,
    Descriptor,
    ImageIndex,
    MediaType,
    detect_media_type,
    parse_manifest,
)
from atoll.oci.transports import ImageName
from atoll.oci.transports._local import (
    MAX_INDEX_SIZE,
    MAX_MANIFEST_SIZE,
    checked_digest,
    has_file,
    open_chunks,
    read_limited,
    write_verified,
)
from atoll.oci.transports.base import ImageDestination, ImageSource

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
#: The image layout version atoll writes; it reads any 1.x.
LAYOUT_VERSION = "1.0.0"
#: The bytes skopeo writes into ``oci-layout`` (Go's json with a space after the colon).
LAYOUT_MARKER = b'{"imageLayoutVersion": "1.0.0"}'
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def blob_relpath(digest: Digest) -> str:
    """``blobs/ALG/HEX`` for a digest proven to be well formed."""
    d = checked_digest(digest)
    return f"{BLOBS_DIR}/{d.algorithm}/{d.hex}"


def blob_path(root: Path, digest: Digest) -> Path:
    return root / blob_relpath(digest)


def ref_name_of(desc: Descriptor) -> str | None:
    return desc.annotations.get(REF_NAME_ANNOTATION) or None


def check_layout_marker(raw: bytes, where: str) -> None:
    """Validate the contents of an ``oci-layout`` file."""
    try:
        data = strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    version = data.get("imageLayoutVersion") if isinstance(data, dict) else None
    if not isinstance(version, str):
        raise ManifestError(f"{where}: no imageLayoutVersion")
    if version.split(".")[0] != "1":
        raise UnsupportedError(f"{where}: image layout version {version} is not supported (1.x)")


def parse_index(raw: bytes, where: str) -> ImageIndex:
    index = parse_manifest(raw, MediaType.OCI_INDEX, where=where)
    if not isinstance(index, ImageIndex):
        raise ManifestError(f"{where}: is an image manifest, not an image index")
    return index


def select_entry(entries: Sequence[Descriptor], ref_name: str | None, where: str) -> Descriptor:
    """The index entry ``oci:…[:REF]`` names (see the module docstring)."""
    names = [n for n in (ref_name_of(e) for e in entries) if n]
    shown = ", ".join(names) or "none"
    if ref_name is None:
        if len(entries) == 1:
            return entries[0]
        if not entries:
            raise NotFoundError(f"{where}: the layout holds no images")
        raise InvalidReferenceError(
            f"{where}: the layout holds {len(entries)} images (names: {shown}); choose one",
            hint="add the name after the path, e.g. oci:DIR:NAME",
        )
    for entry in entries:
        if ref_name_of(entry) == ref_name:
            return entry
    raise NotFoundError(f"{where}: no image named {ref_name!r} (names: {shown})")


def reachable_blobs(
    entries: Iterable[Descriptor], read: Callable[[Digest], bytes | None], where: str
) -> set[Digest]:
    """Every digest reachable from *entries*: manifests, configs, layers, subjects.

    *read* returns a manifest's bytes, or None if the blob is missing (the walk
    then stops there: an absent manifest references nothing we can see)."""
    seen: set[Digest] = set()
    stack = list(entries)
    while stack:
        desc = stack.pop()
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        if desc.media_type not in MANIFEST_TYPES:
            continue
        raw = read(desc.digest)
        if raw is None:
            continue
        doc = parse_manifest(raw, desc.media_type, where=f"{where}: {desc.digest}")
        if isinstance(doc, ImageIndex):
            stack.extend(doc.manifests)
        else:
            stack.extend(doc.blobs())
        subject = json.loads(raw).get("subject")
        if isinstance(subject, dict):
            stack.append(Descriptor.from_json(subject, f"{where}: {desc.digest}: subject"))
    return seen


class LayoutReader(ImageSource):
    """Reading an OCI layout wherever its files are; subclasses supply the files.

    Shared by :class:`LayoutSource` (a directory) and the ``oci-archive:`` source
    (members of a tar file)."""

    def __init__(self, description: str, ref_name: str | None) -> None:
        self.description = description
        self.ref_name = ref_name
        self._entries: tuple[Descriptor, ...] = ()
        self._top: Descriptor | None = None

    @abc.abstractmethod
    def _read(self, relpath: str, limit: int, what: str) -> bytes:
        """The file at *relpath* in the layout (NotFoundError if absent)."""

    @abc.abstractmethod
    def _open(self, relpath: str, what: str) -> AbstractContextManager[Iterator[bytes]]:
        """Stream the file at *relpath* (NotFoundError if absent)."""

    def _load(self) -> None:
        check_layout_marker(
            self._read(LAYOUT_FILE, 4096, "OCI layout marker"), self._where(LAYOUT_FILE)
        )
        index = parse_index(
            self._read(INDEX_FILE, MAX_INDEX_SIZE, "OCI layout index"), self._where(INDEX_FILE)
        )
        self._entries = index.manifests
        self._top = select_entry(index.manifests, self.ref_name, self.description)

    def _where(self, relpath: str) -> str:
        return f"{self.description}: {relpath}"

    @property
    def entries(self) -> tuple[Descriptor, ...]:
        """All entries of the layout's ``index.json``."""
        return self._entries

    @property
    def top_descriptor(self) -> Descriptor:
        assert self._top is not None, "_load() sets it in the constructor"
        return self._top

    def ref_names(self) -> list[str]:
        return _unique_names(self._entries)

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        if digest is None:
            top = self.top_descriptor
            return self._read_manifest(top.digest), top.media_type
        declared = next((e.media_type for e in self._entries if e.digest == digest), None)
        return self._read_manifest(digest), declared

    def _read_manifest(self, digest: Digest) -> bytes:
        return self._read(
            blob_relpath(digest), MAX_MANIFEST_SIZE, f"{self.description}: manifest {digest}"
        )

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[Iterator[bytes]]:
        return self._open(blob_relpath(desc.digest), f"{self.description}: blob {desc.digest}")


def _unique_names(entries: Iterable[Descriptor]) -> list[str]:
    out: list[str] = []
    for entry in entries:
        name = ref_name_of(entry)
        if name and name not in out:
            out.append(name)
    return out


def _root_of(name: ImageName) -> Path:
    if name.path is None:
        raise InvalidReferenceError(f"{name}: no path")
    return name.path


class LayoutSource(LayoutReader):
    """Reads ``oci:DIR[:REF]``."""

    def __init__(self, name: ImageName, ctx: SystemContext) -> None:
        super().__init__(str(name), name.ref_name)
        self.root = _root_of(name)
        if not self.root.is_dir():
            raise NotFoundError(f"{name}: no such directory: {self.root}")
        self._load()

    def _where(self, relpath: str) -> str:
        return str(self.root / relpath)

    def _read(self, relpath: str, limit: int, what: str) -> bytes:
        return read_limited(self.root / relpath, limit, what)

    def _open(self, relpath: str, what: str) -> AbstractContextManager[Iterator[bytes]]:
        return open_chunks(self.root / relpath, what)


def read_layout_index(root: Path) -> ImageIndex:
    """The validated ``index.json`` of the layout at *root*."""
    if not root.is_dir():
        raise NotFoundError(f"oci:{root}: no such directory")
    check_layout_marker(
        read_limited(root / LAYOUT_FILE, 4096, "OCI layout marker"), str(root / LAYOUT_FILE)
    )
    return parse_index(
        read_limited(root / INDEX_FILE, MAX_INDEX_SIZE, "OCI layout index"),
        str(root / INDEX_FILE),
    )


def list_ref_names(root: Path) -> list[str]:
    """The ref names of the layout at *root*, in ``index.json`` order
    (what ``atoll image tags oci:DIR`` prints)."""
    return _unique_names(read_layout_index(root).manifests)


def _blob_reader(root: Path) -> Callable[[Digest], bytes | None]:
    def read(digest: Digest) -> bytes | None:
        try:
            return read_limited(blob_path(root, digest), MAX_MANIFEST_SIZE, f"manifest {digest}")
        except NotFoundError:
            return None

    return read


def _index_json(data: dict[str, Any]) -> bytes:
    # Compact like Go's json.Marshal, which is what skopeo writes.
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RefDeletion:
    """What :func:`delete_ref` removed; ``str()`` gives the deleted image's digest."""

    ref_name: str | None
    descriptor: Descriptor
    removed_blobs: tuple[Digest, ...]

    def __str__(self) -> str:
        return str(self.descriptor.digest)


def delete_ref(root: Path, ref_name: str | None) -> RefDeletion:
    """Remove the image ``oci:ROOT[:REF_NAME]`` names from the layout at *root*.

    Without a name, the layout's only image (as when reading).  The
    ``index.json`` entry goes first (atomically); then the blobs that were
    reachable from it and are reachable from no remaining entry.  Blobs that
    no entry ever reached are left alone: they may belong to a copy in
    progress that has not committed yet."""
    read = _blob_reader(root)
    where = f"oci:{root}"
    with locked_dir(root):
        index = read_layout_index(root)
        target = select_entry(index.manifests, ref_name, where)
        data = json.loads(index.raw)
        pairs = list(zip(data["manifests"], index.manifests, strict=True))
        if ref_name is None:
            gone = [target]
            kept = [(raw, desc) for raw, desc in pairs if desc is not target]
        else:
            gone = [desc for _, desc in pairs if ref_name_of(desc) == ref_name]
            kept = [(raw, desc) for raw, desc in pairs if ref_name_of(desc) != ref_name]
        # Walk both sides before changing anything, so a malformed manifest
        # stops the deletion instead of leaving it half done.
        before = reachable_blobs(gone, read, where)
        after = reachable_blobs((desc for _, desc in kept), read, where)
        data["manifests"] = [raw for raw, _ in kept]
        write_atomic(root / INDEX_FILE, _index_json(data))
    removed: list[Digest] = []
    for digest in sorted(before - after):
        path = blob_path(root, digest)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise from_oserror(exc, str(path)) from exc
        removed.append(digest)
    for alg_dir in {blob_path(root, d).parent for d in removed}:
        fsync_dir(alg_dir)
    return RefDeletion(ref_name, target, tuple(removed))


def merge_entry(entries: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """``index.json`` entries after adding *new*, by skopeo's rules (module docstring)."""

    def name(entry: dict[str, Any]) -> str:
        annotations = entry.get("annotations")
        value = annotations.get(REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
        return value if isinstance(value, str) else ""

    new_name = name(new)
    out = [e for e in entries if not new_name or name(e) != new_name]
    for i, entry in enumerate(out):
        if entry.get("digest") == new["digest"] and not name(entry):
            out[i] = new
            return out
    out.append(new)
    return out


def _index_data(root: Path) -> dict[str, Any]:
    """The JSON of the layout's ``index.json``, validated; a new one if there is none
    yet (containers/image also accepts a layout holding only ``oci-layout``)."""
    if not (root / INDEX_FILE).exists():
        return {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value, "manifests": []}
    data: dict[str, Any] = json.loads(read_layout_index(root).raw)
    return data


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


class LayoutDestination(ImageDestination):
    """Writes ``oci:DIR[:REF]``; see the module docstring for the rules.

    *description* replaces ``oci:DIR`` in messages, for transports that stage
    a layout on the way to somewhere else."""

    def __init__(
        self, name: ImageName, ctx: SystemContext, *, description: str | None = None
    ) -> None:
        self.description = description or str(name)
        self.root = _root_of(name)
        self.ref_name = name.ref_name
        self._lock = threading.Lock()
        self._added: set[Digest] = set()
        self._top: dict[str, Any] | None = None
        self._finished = False
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"{self.description}: {self.root} is not a directory")
        self._new = not self.root.exists() or _is_empty_dir(self.root)
        if self._new:
            try:
                self.root.parent.mkdir(parents=True, exist_ok=True)
                self._work = temp_sibling(self.root)
                self._work.mkdir()
            except OSError as exc:
                raise from_oserror(exc, str(self.root)) from exc
            try:
                write_atomic(self._work / LAYOUT_FILE, LAYOUT_MARKER)
            except BaseException:
                remove_tree(self._work)
                raise
        else:
            if not (self.root / LAYOUT_FILE).exists():
                raise InvalidInputError(
                    f"{self.description}: {self.root} exists and is not an OCI image layout "
                    f"(no {LAYOUT_FILE} file)",
                    hint="choose a new or empty directory",
                )
            # Fail before writing anything if the index cannot be updated later.
            _index_data(self.root)
            self._work = self.root

    def _blob_target(self, digest: Digest) -> Path:
        target = blob_path(self._work, digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_oserror(exc, str(target.parent)) from exc
        return target

    def has_blob(self, desc: Descriptor) -> bool:
        return has_file(blob_path(self._work, desc.digest), desc.size)

    def put_blob(self, desc: Descriptor, chunks: Iterable[bytes]) -> None:
        self._check_open()
        target = self._blob_target(desc.digest)
        if write_verified(target, desc, chunks, f"{self.description}: blob {desc.digest}"):
            with self._lock:
                self._added.add(desc.digest)

    def put_manifest(self, raw: bytes, media_type: str, *, top_level: bool) -> None:
        if not media_type:
            try:
                media_type = detect_media_type(strictjson.loads(raw))
            except (strictjson.StrictJSONError, AttributeError):
                raise ManifestError(f"{self.description}: manifest is not a JSON object") from None
        desc = Descriptor(media_type, Digest.of(raw), len(raw))
        self.put_blob(desc, [raw])
        if top_level:
            with self._lock:
                self._top = desc.to_json()

    def commit(self) -> None:
        self._check_open()
        if self._top is None:
            raise AtollError(f"{self.description}: commit before the manifest was written")
        entry = dict(self._top)
        if self.ref_name:
            entry["annotations"] = {REF_NAME_ANNOTATION: self.ref_name}
        with locked_dir(self._work):
            data = _index_data(self._work)
            data["manifests"] = merge_entry(list(data["manifests"]), entry)
            write_atomic(self._work / INDEX_FILE, _index_json(data))
        if self._new:
            try:
                fsync_tree(self._work)
                # rename(2) also replaces an empty directory, the other case of "new".
                self._work.rename(self.root)
                fsync_dir(self.root.parent)
            except OSError as exc:
                self.abort()
                raise from_oserror(exc, f"{self.description}: cannot move into place") from exc
        self._finished = True

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._new:
            remove_tree(self._work)
            return
        try:
            entries = parse_index(_index_json(_index_data(self.root)), self.description).manifests
            in_use = reachable_blobs(entries, _blob_reader(self.root), self.description)
        except AtollError:
            # Cannot tell which blobs are in use: keep them, they are verified and harmless.
            return
        for digest in self._added - in_use:
            blob_path(self.root, digest).unlink(missing_ok=True)

    def close(self) -> None:
        # Closing without commit means the copy did not finish: undo it.
        self.abort()

    def _check_open(self) -> None:
        if self._finished:
            raise AtollError(f"{self.description}: destination already committed or aborted")
