"""The ``docker://`` transport: images in a registry, through :class:`RegistryClient`.

A destination writes blobs as they come (the registry verifies each against
its digest before it becomes visible, and so does atoll while it streams),
instance manifests by digest as they come, and the top-level manifest by tag
only in :meth:`DockerDestination.commit`.  Until then no tag moves, so
:meth:`DockerDestination.abort` has nothing to undo in the registry: blobs and
untagged manifests are content-addressed and harmless.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from atoll.errors import AtollError, DigestMismatchError, InvalidReferenceError
from atoll.oci.api import UploadSession
from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest, Verifier
from atoll.oci.manifest import Descriptor
from atoll.oci.pullsource import PullEndpoint
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.oci.transports.base import ImageDestination, ImageSource, MountOrigin


def _reference(name: ImageName) -> ImageReference:
    if name.transport is not Transport.DOCKER or name.reference is None:
        raise InvalidReferenceError(f"{name} is not a docker:// image name")
    return name.reference


class DockerSource(ImageSource):
    """A registry image.  Without a *client* given, the reads go through
    :class:`~atoll.oci.pullsource.PullEndpoint`: registries.conf's mirrors in
    order, then the primary at its ``location``; the first that serves the
    top-level manifest serves the rest of the image."""

    def __init__(
        self, name: ImageName, ctx: SystemContext, *, client: RegistryClient | None = None
    ) -> None:
        self.reference = _reference(name)
        self.description = str(name)
        self._owns_client = client is None
        self._endpoint: PullEndpoint | None = None
        self.repository = self.reference.repository
        if client is None:
            self._endpoint = PullEndpoint(self.reference, ctx)
            client, self.repository = self._endpoint.client, self._endpoint.repository
        self.client = client

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        wanted = str(digest) if digest is not None else self.reference.manifest_ref
        if self._endpoint is None:
            fetched = self.client.get_manifest(self.repository, wanted)
        else:
            fetched = self._endpoint.read(lambda client, repo: client.get_manifest(repo, wanted))
            # The image now comes from this endpoint only.
            self.client, self.repository = self._endpoint.client, self._endpoint.repository
        return fetched.raw, fetched.media_type

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[Iterator[bytes]]:
        with self.client.open_blob(self.repository, desc.digest, desc.size) as stream:
            yield iter(stream)

    @property
    def mount_origin(self) -> MountOrigin:
        return MountOrigin(self.client.registry, self.repository)

    def range_client(self) -> tuple[RegistryClient, str]:
        return self.client, self.repository

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


class DockerDestination(ImageDestination):
    accepts_oci = True

    def __init__(
        self,
        name: ImageName,
        ctx: SystemContext,
        *,
        client: RegistryClient | None = None,
        owns_client: bool | None = None,
    ) -> None:
        self.reference = _reference(name)
        self.description = str(name)
        # A client passed in belongs to the caller unless it hands it over.
        self._owns_client = client is None if owns_client is None else owns_client
        self.client = client or RegistryClient(self.reference.registry, ctx)
        self._lock = threading.Lock()
        # Sessions a refused mount opened, kept for the upload of the same blob.
        self._sessions: dict[Digest, UploadSession] = {}
        self._top_level: tuple[bytes, str] | None = None

    @property
    def _repository(self) -> str:
        return self.reference.repository

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.blob_exists(self._repository, desc.digest)

    def mount_blob(self, desc: Descriptor, origin: MountOrigin) -> bool:
        if origin.registry != self.reference.registry:
            return False
        if origin.repository == self._repository:
            return self.has_blob(desc)
        result = self.client.mount_blob(self._repository, desc.digest, origin.repository)
        if result.session is not None:
            with self._lock:
                stale = self._sessions.pop(desc.digest, None)
                self._sessions[desc.digest] = result.session
            if stale is not None:
                self.client.cancel_upload(stale)
        return result.mounted

    def put_blob(self, desc: Descriptor, chunks: Iterable[bytes]) -> None:
        verifier = Verifier(desc.digest, desc.size, f"{self.description}: blob {desc.digest}")

        def verified() -> Iterator[bytes]:
            for chunk in chunks:
                verifier.update(chunk)
                yield chunk
            # Raising here, before the last byte is acknowledged, makes the upload
            # fail instead of completing with the wrong content.
            verifier.verify()

        with self._lock:
            session = self._sessions.pop(desc.digest, None)
        self.client.upload_blob(
            self._repository, desc.digest, verified(), size=desc.size, session=session
        )

    def put_manifest(self, raw: bytes, media_type: str, *, top_level: bool) -> None:
        if top_level:
            self._top_level = (raw, media_type)
            return
        self.client.put_manifest(self._repository, str(Digest.of(raw)), raw, media_type)

    def commit(self) -> None:
        if self._top_level is None:
            raise AtollError(f"{self.description}: commit without a manifest")
        raw, media_type = self._top_level
        ref = self.reference
        if ref.digest is not None:
            actual = Digest.of(raw, ref.digest.algorithm)
            if actual != ref.digest:
                raise DigestMismatchError(
                    f"{self.description}: the image's manifest is {actual}, "
                    f"not the {ref.digest} the reference names",
                    hint="drop the @DIGEST from the destination, or use --preserve-digests",
                )
        target = ref.tag if ref.tag is not None else str(Digest.of(raw))
        self.client.put_manifest(self._repository, target, raw, media_type)
        self._top_level = None

    def abort(self) -> None:
        self._top_level = None
        self._cancel_sessions()

    def close(self) -> None:
        self._cancel_sessions()
        if self._owns_client:
            self.client.close()

    def _cancel_sessions(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            self.client.cancel_upload(session)
