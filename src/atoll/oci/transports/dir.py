"""``dir:DIR``: one image as plain files, skopeo's (containers/image's) dir transport.

On disk, exactly as skopeo 1.9.3 writes it (checked by experiment)::

    DIR/
    ├── version                   "Directory Transport Version: 1.1\\n"
    ├── manifest.json             the top-level manifest or index, bytes as copied
    ├── <hex>                     a config or layer blob: sha256 hex, no "sha256:"
    └── <hex>.manifest.json       an instance manifest of the index (copies with --all)

There are no media types on disk: a reader learns them from the manifests.
skopeo's ``signature-N`` files (simple signing) are neither written nor read.
Blob names are built from a re-validated Digest, never from manifest text.

Writing, like skopeo: DIR may be absent, an empty directory, or a directory
holding a ``version`` file with exactly the text above (a previous ``dir:``
image, which is replaced whole).  Anything else is refused, so a typo cannot
wipe a directory of unrelated files.  Unlike skopeo, which empties DIR first
and writes into it, atoll writes into a temporary sibling and swaps it in at
commit (renameat2 RENAME_EXCHANGE where the kernel has it): a failed copy
leaves the previous image, a successful one never shows a mix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from atoll.errors import AtollError, InvalidInputError, NotFoundError, from_oserror
from atoll.fsutil import fsync_tree, remove_tree, replace_dir, temp_sibling, write_atomic
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor
from atoll.oci.transports import ImageName
from atoll.oci.transports._local import (
    MAX_MANIFEST_SIZE,
    checked_digest,
    has_file,
    open_chunks,
    read_limited,
    write_verified,
)
from atoll.oci.transports.base import ImageDestination, ImageSource

VERSION_FILE = "version"
#: The exact content of ``version``; skopeo refuses to overwrite a directory without it.
VERSION = "Directory Transport Version: 1.1\n"
MANIFEST_FILE = "manifest.json"


def blob_name(digest: Digest) -> str:
    """The file name of a blob: its hex digest (containers/image's ``digest.Hex()``)."""
    return checked_digest(digest).hex


def instance_manifest_name(digest: Digest) -> str:
    return f"{checked_digest(digest).hex}.manifest.json"


def _dir_of(name: ImageName) -> Path:
    if name.path is None:
        raise InvalidInputError(f"{name}: no directory")
    return name.path


class DirSource(ImageSource):
    """Reads ``dir:DIR``."""

    def __init__(self, name: ImageName, ctx: SystemContext) -> None:
        self.description = str(name)
        self.root = _dir_of(name)
        if not self.root.is_dir():
            raise NotFoundError(f"{self.description}: no such directory: {self.root}")
        if not (self.root / MANIFEST_FILE).is_file():
            raise NotFoundError(
                f"{self.description}: no {MANIFEST_FILE} in {self.root}: not a dir: image"
            )

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        top = self.root / MANIFEST_FILE
        if digest is None:
            return read_limited(top, MAX_MANIFEST_SIZE, f"{self.description}: manifest"), None
        path = self.root / instance_manifest_name(digest)
        what = f"{self.description}: manifest {digest}"
        if not path.exists():
            # Asking for the top-level manifest by its digest is fine too.
            raw = read_limited(top, MAX_MANIFEST_SIZE, what)
            if Digest.of(raw, digest.algorithm) == digest:
                return raw, None
        return read_limited(path, MAX_MANIFEST_SIZE, what), None

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[Iterator[bytes]]:
        return open_chunks(
            self.root / blob_name(desc.digest), f"{self.description}: blob {desc.digest}"
        )


class DirDestination(ImageDestination):
    """Writes ``dir:DIR``; the previous image there is replaced at commit."""

    def __init__(self, name: ImageName, ctx: SystemContext) -> None:
        self.description = str(name)
        self.root = _dir_of(name)
        self._check_target()
        self._lock = threading.Lock()
        self._have_top = False
        self._finished = False
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self._stage = temp_sibling(self.root)
            self._stage.mkdir()
        except OSError as exc:
            raise from_oserror(exc, str(self.root)) from exc
        try:
            write_atomic(self._stage / VERSION_FILE, VERSION.encode())
        except BaseException:
            remove_tree(self._stage)
            raise

    def _check_target(self) -> None:
        root = self.root
        if not root.exists():
            return
        if not root.is_dir() or root.is_symlink():
            raise InvalidInputError(f"{self.description}: {root} exists and is not a directory")
        if not any(root.iterdir()):
            return
        try:
            version = (root / VERSION_FILE).read_bytes()
        except OSError:
            version = None
        if version != VERSION.encode():
            raise InvalidInputError(
                f"{self.description}: {root} is not empty and is not a dir: image "
                f"(no {VERSION_FILE!r} file saying {VERSION.strip()!r}); refusing to overwrite it",
                hint="choose a new or empty directory",
            )

    def has_blob(self, desc: Descriptor) -> bool:
        # Only the staged copy counts: the old image in DIR goes away at commit.
        return has_file(self._stage / blob_name(desc.digest), desc.size)

    def put_blob(self, desc: Descriptor, chunks: Iterable[bytes]) -> None:
        self._check_open()
        target = self._stage / blob_name(desc.digest)
        write_verified(target, desc, chunks, f"{self.description}: blob {desc.digest}")

    def put_manifest(self, raw: bytes, media_type: str, *, top_level: bool) -> None:
        self._check_open()
        digest = Digest.of(raw)
        name = MANIFEST_FILE if top_level else instance_manifest_name(digest)
        desc = Descriptor(media_type, digest, len(raw))
        write_verified(self._stage / name, desc, [raw], f"{self.description}: manifest {digest}")
        if top_level:
            with self._lock:
                self._have_top = True

    def commit(self) -> None:
        self._check_open()
        if not self._have_top:
            raise AtollError(f"{self.description}: commit before the manifest was written")
        try:
            fsync_tree(self._stage)
        except OSError as exc:
            raise from_oserror(exc, str(self._stage)) from exc
        # Checked again: the directory may have changed since the copy began.
        self._check_target()
        replace_dir(self._stage, self.root)
        self._finished = True

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        remove_tree(self._stage)

    def close(self) -> None:
        self.abort()

    def _check_open(self) -> None:
        if self._finished:
            raise AtollError(f"{self.description}: destination already committed or aborted")
