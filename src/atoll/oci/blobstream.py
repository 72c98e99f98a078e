"""Reading a blob from a registry as a stream that survives broken connections.

When the connection breaks after N bytes, the stream asks again with
``Range: bytes=N-``.  A ``206`` continues where it stopped; a ``200`` (the
registry or its storage ignores ranges) sends the whole blob again and the
stream skips its first N bytes.  Either way the consumer sees each byte once,
in order, and never learns of the restart.  Bytes are not verified here: the
consumer (the copy engine, or :meth:`RegistryClient.fetch_blob`) does that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from atoll.closing import Closeable
from atoll.errors import RegistryError
from atoll.logs import Logger
from atoll.oci.digest import Digest
from atoll.oci.httputil import content_range_start
from atoll.oci.plainhttp import Response, TransportError

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient

log = Logger(__name__)


class BlobStream(Closeable):
    """The chunks of one blob.  Use as a context manager so the connection is released."""

    def __init__(
        self, client: RegistryClient, repository: str, digest: Digest, size: int | None
    ) -> None:
        self._client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self._what = f"reading blob {digest}"
        self._response: Response | None = None
        self._skip = 0
        #: Bytes of the blob received so far.
        self.offset = 0
        #: How many times the download was resumed after a broken connection.
        self.resumed = 0

    def start(self) -> None:
        """Send the first request, so a missing blob is reported before any reading."""
        if self._response is None:
            self._open()

    def _open(self) -> None:
        client = self._client
        headers = {"Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
        response = client.blob_request(self.repository, self.digest, headers, self._what)
        self._skip = 0
        status = response.status_code
        if status == 206 and self.offset:
            start = content_range_start(response.headers.get("Content-Range", ""))
            if start != self.offset:
                response.close()
                raise RegistryError(
                    f"{client.name(self.repository)}: {self._what}: asked for bytes from "
                    f"{self.offset}, the registry sent them from {start}"
                )
        elif status == 200:
            self._skip = self.offset
        elif status == 416 and self.offset and self.offset == self.size:
            # Everything had arrived when the connection broke.
            response.close()
            return
        else:
            try:
                response.read()
            finally:
                response.close()
            client.fail(response, self._what, self.repository)
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        client = self._client
        size = client.read_chunk_size
        # Bytes received but not yet handed out; they count in self.offset, so a
        # broken connection loses none of them.
        buffer = bytearray()
        failures = 0
        while True:
            if self._response is None:
                if self.size is not None and self.offset >= self.size > 0:
                    break
                self._open()
                if self._response is None:
                    break
            response = self._response
            try:
                for received in response.iter_raw():
                    piece = received
                    if self._skip:
                        drop = min(self._skip, len(piece))
                        self._skip -= drop
                        piece = piece[drop:]
                    if not piece:
                        continue
                    self.offset += len(piece)
                    failures = 0
                    if client.rate_limiter is not None:
                        client.rate_limiter.consume(len(piece))
                    buffer += piece
                    while len(buffer) >= size:
                        yield bytes(buffer[:size])
                        del buffer[:size]
            except TransportError as exc:
                self.close()
                failures += 1
                if failures >= max(1, client.ctx.retries):
                    raise client.transport_error(exc, self._what, self.repository) from None
                delay = client.backoff(failures - 1)
                log.debug(
                    "%s: %s broke after %d bytes (%s); resuming in %.2f s",
                    client.name(self.repository),
                    self._what,
                    self.offset,
                    exc,
                    delay,
                )
                client.sleep(delay)
                self.resumed += 1
                continue
            self.close()
            break
        if buffer:
            yield bytes(buffer)

    def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()
