"""``containers-storage:REF``: podman's local image store, reached through podman.

atoll does not open the store's files (their format and locking belong to
containers/storage); it asks podman to move images in and out as
``oci-archive`` files::

    source:       podman image save --format oci-archive -o TMP/image.tar REF
                  -> ArchiveSource(TMP/image.tar)       (TMP deleted on close)
    destination:  ArchiveDestination(TMP/image.tar)     (blobs verified as usual)
                  -> podman load -i TMP/image.tar       (prints the image ID)
                  -> podman tag ID REF

Digests are NOT preserved through the store.  podman keeps layers
uncompressed and compresses them anew on every save, so the manifest and
layer digests read back differ from those written; only the config digest
(the image ID) and the uncompressed layer contents (diff_ids) survive.  The
destination therefore says ``preserves_digests = False``, and a copy that
must keep digests (signatures, ``--preserve-digests``) should not go through
it.

Which store podman uses comes from the environment podman sees, taken from
``SystemContext.environ``: ``CONTAINERS_STORAGE_CONF`` (graphroot, runroot,
driver), ``CONTAINERS_CONF``, ``XDG_*``, ``TMPDIR``.  Tests point these at a
temporary directory, so they never touch the machine's default store.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from atoll.errors import (
    CommandError,
    InvalidReferenceError,
    NotFoundError,
    UnsupportedError,
    from_oserror,
)
from atoll.fsutil import TMP_PREFIX, remove_tree
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.oci.transports.archive import ArchiveDestination, ArchiveSource
from atoll.oci.transports.base import ImageDestination, ImageSource
from atoll.podman import find_podman, podman, podman_environment
from atoll.run import Completed

_LOADED_RE = re.compile(r"^Loaded image(?:\(s\))?:\s*(.+)$", re.MULTILINE)
_ARCHIVE = "image.tar"
_WHY = "containers-storage: needs it"


def _podman(ctx: SystemContext, args: Sequence[str | Path]) -> Completed:
    return podman(args, env=podman_environment(ctx.environ), why=_WHY)


def _reference_of(name: ImageName) -> ImageReference:
    if name.reference is None:
        raise InvalidReferenceError(f"{name}: no image reference")
    return name.reference


def _stage_dir(ctx: SystemContext) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=ctx.tmpdir))
    except OSError as exc:
        where = ctx.tmpdir or tempfile.gettempdir()
        raise from_oserror(exc, f"a temporary directory in {where}") from exc


def _not_known(exc: CommandError) -> bool:
    tail = exc.stderr_tail.lower()
    return "image not known" in tail or "no such image" in tail


class StorageSource(ImageSource):
    """Reads ``containers-storage:REF`` by saving it with podman."""

    def __init__(self, name: ImageName, ctx: SystemContext) -> None:
        self.description = str(name)
        self.reference = _reference_of(name)
        self._tmp = _stage_dir(ctx)
        try:
            archive = self._tmp / _ARCHIVE
            try:
                save: list[str | Path] = ["image", "save", "--format", "oci-archive", "-o", archive]
                _podman(ctx, [*save, str(self.reference)])
            except CommandError as exc:
                if _not_known(exc):
                    raise NotFoundError(
                        f"{self.description}: no such image in podman's storage"
                    ) from None
                raise
            self._archive = ArchiveSource(
                ImageName(Transport.OCI_ARCHIVE, path=archive),
                ctx,
                description=self.description,
            )
            # The open archive keeps its file; the name is no longer needed.
            archive.unlink()
        except BaseException:
            remove_tree(self._tmp)
            raise

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        return self._archive.get_manifest(digest)

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[Iterator[bytes]]:
        return self._archive.open_blob(desc)

    def close(self) -> None:
        self._archive.close()
        remove_tree(self._tmp)


class StorageDestination(ImageDestination):
    """Writes ``containers-storage:REF`` by loading an archive with podman.

    Digests are not preserved (see the module docstring)."""

    #: podman recompresses layers on the way out: digests read back differ.
    preserves_digests = False

    def __init__(self, name: ImageName, ctx: SystemContext) -> None:
        self.description = str(name)
        self.reference = _reference_of(name)
        if self.reference.digest is not None or self.reference.tag is None:
            raise UnsupportedError(
                f"{self.description}: podman's storage is written by tag, not by digest",
                hint="name a tag, e.g. containers-storage:localhost/NAME:TAG",
            )
        self._ctx = ctx
        # Fail now, not after the whole image was staged, if podman is missing.
        find_podman(podman_environment(ctx.environ), why=_WHY)
        self._tmp = _stage_dir(ctx)
        self._finished = False
        try:
            self._archive = ArchiveDestination(
                ImageName(Transport.OCI_ARCHIVE, path=self._tmp / _ARCHIVE),
                ctx,
                description=self.description,
            )
        except BaseException:
            remove_tree(self._tmp)
            raise

    def has_blob(self, desc: Descriptor) -> bool:
        return self._archive.has_blob(desc)

    def put_blob(self, desc: Descriptor, chunks: Iterable[bytes]) -> None:
        self._archive.put_blob(desc, chunks)

    def put_manifest(self, raw: bytes, media_type: str, *, top_level: bool) -> None:
        self._archive.put_manifest(raw, media_type, top_level=top_level)

    def commit(self) -> None:
        try:
            self._archive.commit()
            image_id = self._load(self._tmp / _ARCHIVE)
            _podman(self._ctx, ["tag", image_id, str(self.reference)])
        finally:
            remove_tree(self._tmp)
        self._finished = True

    def _load(self, archive: Path) -> str:
        proc = _podman(self._ctx, ["load", "--input", archive])
        out = proc.stdout.decode(errors="replace")
        loaded = [name.strip() for line in _LOADED_RE.findall(out) for name in str(line).split(",")]
        if not loaded:
            raise CommandError(
                f"{self.description}: podman load did not say which image it loaded: "
                f"{out.strip()[-200:] or 'no output'}"
            )
        # The archive carries no name, so podman reports the image by ID.
        return loaded[-1].removeprefix("sha256:")

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._archive.abort()
        remove_tree(self._tmp)

    def close(self) -> None:
        self.abort()
