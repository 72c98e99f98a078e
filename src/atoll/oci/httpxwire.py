"""The registry client's requests that :mod:`atoll.oci.plainhttp` does not send:
streamed bodies and redirected blob downloads, over httpx.

httpx is imported when the first such request is made.  Its answers become
:class:`atoll.oci.plainhttp.Response` and its transport errors
:class:`atoll.oci.plainhttp.TransportError`, so the client handles both
transports with one code.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from atoll.lazy import lazy_module
from atoll.oci.plainhttp import URL, ConnectFailed, Headers, Response, TimedOut, TransportError

if TYPE_CHECKING:
    import httpx

    from atoll.oci.client import Body
else:
    httpx = lazy_module("httpx")


class HttpxTransport:
    """One httpx connection pool, made at the first request; thread-safe."""

    def __init__(
        self, ssl_context: ssl.SSLContext, timeout: float, max_connections: int, user_agent: str
    ) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_connections = max_connections
        self.user_agent = user_agent
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    verify=self.ssl_context,
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=self.max_connections),
                    headers={"User-Agent": self.user_agent},
                    trust_env=False,
                )
            return self._client

    def send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        content: Body = None,
        *,
        follow_redirects: bool = False,
    ) -> Response:
        """Send and read the status and headers; the body is left to the response."""
        client = self._http()
        try:
            request = client.build_request(method, str(url), headers=headers, content=content)
            answer = client.send(request, stream=True, follow_redirects=follow_redirects)
        except httpx.TransportError as exc:
            raise _wrap(exc) from exc
        return _HttpxResponse(answer)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class _HttpxResponse(Response):
    def __init__(self, answer: httpx.Response) -> None:
        super().__init__(
            answer.status_code,
            answer.reason_phrase,
            Headers(answer.headers.multi_items()),
            URL(str(answer.url)),
        )
        self._answer = answer

    def iter_raw(self) -> Iterator[bytes]:
        try:
            yield from self._answer.iter_raw()
        except httpx.TransportError as exc:
            raise _wrap(exc) from exc

    def iter_bytes(self) -> Iterator[bytes]:
        try:
            yield from self._answer.iter_bytes()
        except httpx.TransportError as exc:
            raise _wrap(exc) from exc

    def read(self) -> bytes:
        if self._content is None:
            try:
                self._content = self._answer.read()
            except httpx.TransportError as exc:
                raise _wrap(exc) from exc
        return self._content

    def close(self) -> None:
        self._answer.close()


def _wrap(exc: httpx.TransportError) -> TransportError:
    text = str(exc) or type(exc).__name__
    connecting = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    if isinstance(exc, httpx.TimeoutException):
        return TimedOut(text, connecting=connecting)
    if isinstance(exc, httpx.ConnectError):
        return ConnectFailed(text, connecting=True)
    return TransportError(text, connecting=connecting)
