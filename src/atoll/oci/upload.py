"""Blob uploads to a registry, the steps of :class:`atoll.oci.client.RegistryClient`'s
``start_upload``, ``mount_blob``, ``upload_blob`` and ``cancel_upload``.

``POST /v2/NAME/blobs/uploads/`` opens a session (with ``?mount=DIGEST&from=REPO``
a registry that holds the blob links it instead: 201).  A blob up to the
client's ``chunked_upload_threshold`` goes in one streamed ``PUT
LOCATION?digest=``; a larger one (or when asked) in ``PATCH`` chunks with
``Content-Range: START-END`` and a final empty ``PUT``.  A failed upload is
cancelled with ``DELETE LOCATION``.  These functions use the client's request
plumbing (authorization, retries, errors), which is why they take it first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from atoll.errors import AtollError, RegistryError
from atoll.logs import Logger
from atoll.oci.api import MountResult, UploadSession, pull_scope, push_scope
from atoll.oci.digest import Digest
from atoll.oci.httputil import rechunk
from atoll.oci.plainhttp import Response, TransportError

if TYPE_CHECKING:
    from atoll.oci.client import Body, RegistryClient

log = Logger(__name__)


def start_upload(client: RegistryClient, repository: str) -> UploadSession:
    what = "starting an upload"
    response = client._call(
        "POST", repository, "blobs/uploads/", what, [push_scope(repository)], ok=(202,)
    )
    return _session(client, repository, response, what)


def mount_blob(
    client: RegistryClient, repository: str, digest: Digest, from_repository: str
) -> MountResult:
    """Ask the registry to link a blob it holds in *from_repository*."""
    what = f"mounting blob {digest} from {from_repository}"
    response = client._call(
        "POST",
        repository,
        "blobs/uploads/",
        what,
        [push_scope(repository), pull_scope(from_repository)],
        params={"mount": str(digest), "from": from_repository},
        ok=(201, 202),
    )
    if response.status_code == 201:
        return MountResult(True)
    return MountResult(False, _session(client, repository, response, what))


def upload_blob(
    client: RegistryClient,
    repository: str,
    digest: Digest,
    chunks: Iterable[bytes],
    *,
    size: int | None = None,
    session: UploadSession | None = None,
    chunked: bool | None = None,
) -> None:
    """Upload a blob; the registry checks it against *digest* before it becomes visible.

    If *chunks* raises (a digest check on the way, say), the upload is
    cancelled and the exception propagates.
    """
    if chunked is None:
        chunked = size is not None and size > client.chunked_upload_threshold
    session = session or start_upload(client, repository)
    what = f"uploading blob {digest}"
    try:
        body: Body = iter(chunks)
        if chunked:
            session = _patch_chunks(client, session, what, chunks)
            body = b""
        url = session.url.copy_merge_params({"digest": str(digest)})
        response = client._send_authorized(
            "PUT",
            url,
            [push_scope(repository)],
            {"Content-Type": "application/octet-stream"},
            content=body,
        )
        client._expect(response, (201, 204), what, repository)
    except TransportError as exc:
        cancel_upload(client, session)
        raise client.transport_error(exc, what, repository) from None
    except BaseException:
        cancel_upload(client, session)
        raise


def cancel_upload(client: RegistryClient, session: UploadSession) -> None:
    """Best effort: a registry drops stale sessions by itself anyway."""
    try:
        response = client._send_authorized(
            "DELETE", session.url, [push_scope(session.repository)], {}, retry=False
        )
        log.debug("cancelled upload %s: HTTP %d", session.url, response.status_code)
    except (AtollError, TransportError) as exc:
        log.debug("cancelling upload %s failed: %s", session.url, exc)


def _patch_chunks(
    client: RegistryClient, session: UploadSession, what: str, chunks: Iterable[bytes]
) -> UploadSession:
    offset = 0
    for piece in rechunk(chunks, client.upload_chunk_size):
        end = offset + len(piece) - 1
        response = client._send_authorized(
            "PATCH",
            session.url,
            [push_scope(session.repository)],
            {"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"},
            content=piece,
        )
        client._expect(response, (202,), what, session.repository)
        accepted = response.headers.get("Range", "")
        if accepted and accepted != f"0-{end}":
            raise RegistryError(
                f"{client.name(session.repository)}: {what}: the registry holds bytes "
                f"{accepted}, expected 0-{end}"
            )
        session = _session(client, session.repository, response, what)
        offset = end + 1
    return session


def _session(
    client: RegistryClient, repository: str, response: Response, what: str
) -> UploadSession:
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(
            f"{client.name(repository)}: {what}: the registry sent no Location for the upload"
        )
    # Location may be relative to the request ("/v2/...") or absolute.
    return UploadSession(repository, response.url.join(location))
