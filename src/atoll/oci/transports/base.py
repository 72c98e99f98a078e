"""What every transport provides: a source to read images from and a destination
to write them to.

The contract, which the copy engine relies on:

* A source hands out manifest bytes exactly as stored, and blob bytes as a
  stream; it never verifies them (the copy engine does, as they pass).
* A destination verifies every blob against its descriptor before the blob
  becomes visible, writes manifests only after all the blobs they name, and
  makes a reference (tag, ``index.json`` entry, archive file) point at the
  image only in :meth:`ImageDestination.commit`.  :meth:`abort` leaves the
  destination as it was before the copy (content-addressed blobs that were
  verified may stay: they are harmless and make a retry faster).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, NamedTuple

from atoll.closing import Closeable
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient

#: Bytes read or written at once when streaming blobs.
CHUNK_SIZE = 1 << 20


class MountOrigin(NamedTuple):
    """Where a blob lives in a registry, so a destination on the same registry
    can mount it instead of uploading it."""

    registry: str
    repository: str


class ImageSource(Closeable, abc.ABC):
    #: Human-readable name used in messages, e.g. ``docker://host/repo:tag``.
    description: str

    @abc.abstractmethod
    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        """The top-level manifest (digest None) or the one with *digest*, and
        the media type the transport declared for it (None if it declares none)."""

    @abc.abstractmethod
    def open_blob(self, desc: Descriptor) -> AbstractContextManager[Iterator[bytes]]:
        """Stream the blob's bytes, in chunks; raise NotFoundError if absent."""

    @property
    def mount_origin(self) -> MountOrigin | None:
        return None

    def range_client(self) -> tuple[RegistryClient, str] | None:
        """The registry (and repository) that answers ``Range`` requests for this
        source's blobs and holds its deltas, for file-level pulls
        (:mod:`atoll.store.partial`); None: blobs are read whole."""
        return None


class ImageDestination(Closeable, abc.ABC):
    description: str
    #: False for destinations that can only hold Docker schema 2 images.
    accepts_oci: bool = True
    #: False when the destination re-encodes what it stores (podman storage),
    #: so the image's digest cannot be kept.
    preserves_digests: bool = True

    @abc.abstractmethod
    def has_blob(self, desc: Descriptor) -> bool:
        """True if the blob is already there (and need not be written)."""

    def mount_blob(self, desc: Descriptor, origin: MountOrigin) -> bool:
        """Try to link the blob from *origin* without copying; True on success."""
        return False

    @abc.abstractmethod
    def put_blob(self, desc: Descriptor, chunks: Iterable[bytes]) -> None:
        """Store a blob, verifying digest and size before it becomes visible."""

    @abc.abstractmethod
    def put_manifest(self, raw: bytes, media_type: str, *, top_level: bool) -> None:
        """Store a manifest. Instance manifests of an index are stored with
        ``top_level=False`` before the index; the one the reference names comes
        last with ``top_level=True`` and becomes visible at :meth:`commit`."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the reference point at the image."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Undo what was written since the destination was opened."""

    def __exit__(self, *exc_info: object) -> None:
        if exc_info and exc_info[0] is not None:
            self.abort()
        self.close()
