"""The registry client's HTTP: URLs, headers and responses, and the transport that
sends every request whose body is in memory over :mod:`atoll.oci.wire`'s
connections.

Importing httpx (with httpcore, h11, and trio or anyio where they are installed)
costs 25 ms of CPU and more before the first request.  A copy that only mounts
blobs, an auto-update check or a login sends nothing but pings, token requests,
manifest HEADs/GETs/PUTs and mount POSTs: all of them go through
:class:`PlainTransport` and never import httpx.  Streamed bodies (blob
uploads) and requests that may be redirected (blob downloads, which registries
send to their storage) go through httpx (:mod:`atoll.oci.httpxwire`); both hand
back a :class:`Response` and raise :class:`TransportError`, so the client's
authentication, retries and error messages are one code for both.

Connections: :class:`PlainTransport` keeps idle keep-alive connections per
origin; a request takes one (or opens one), and gives it back when its answer
was read to the end and the server keeps it open.  A reused connection that the
server had closed in the meantime is replaced once.  TLS uses the client's SSL
context (system CAs, certs.d, client certificates, or no verification for an
insecure registry), so the trust is the same as httpx's.

Errors: ``OSError`` and :class:`atoll.oci.wire.ProtocolError` become
:class:`TransportError` (``connecting`` when no request reached the server),
:class:`ConnectFailed` or :class:`TimedOut`, with the original as ``__cause__``
(:func:`atoll.oci.httputil.is_tls_error` looks there).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from atoll.oci.wire import Answer, Connection, Disconnected, ProtocolError

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Bytes read from a response at once.
_READ_SIZE = 1 << 16
#: Errors of a reused connection that the server closed while it was idle.
_STALE = (
    Disconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class TransportError(Exception):
    """No (complete) answer: the connection failed, broke or timed out."""

    def __init__(self, message: str, *, connecting: bool = False) -> None:
        super().__init__(message)
        #: True when the request never reached the server (safe to send again).
        self.connecting = connecting


class ConnectFailed(TransportError):
    pass


class TimedOut(TransportError):
    pass


class URL:
    """An absolute ``http``/``https`` URL; the default port is None, as httpx has it.

    Raises ValueError for anything else, or a port that is not a number."""

    __slots__ = ("_text", "host", "path", "port", "query", "scheme")

    def __init__(self, text: str) -> None:
        parts = urlsplit(text)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an absolute HTTP URL: {text!r}")
        port = parts.port
        self._text = text
        self.scheme = parts.scheme
        self.host = parts.hostname.lower()
        self.port = None if port == _DEFAULT_PORTS[parts.scheme] else port
        self.path = parts.path or "/"
        self.query = parts.query

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return (self.scheme, self.host, self.port)

    @property
    def target(self) -> str:
        """What the request line names: the path and the query."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def join(self, reference: str) -> URL:
        return URL(urljoin(self._text, reference))

    def copy_merge_params(self, params: Mapping[str, str]) -> URL:
        """This URL with *params* in its query, replacing those of the same names."""
        kept = [(k, v) for k, v in parse_qsl(self.query, keep_blank_values=True) if k not in params]
        return self._with_query([*kept, *params.items()])

    def copy_add_params(self, params: Iterable[tuple[str, str]]) -> URL:
        """This URL with *params* added after those its query has."""
        return self._with_query([*parse_qsl(self.query, keep_blank_values=True), *params])

    def _with_query(self, pairs: list[tuple[str, str]]) -> URL:
        base = self._text.split("#", 1)[0].split("?", 1)[0]
        return URL(f"{base}?{urlencode(pairs)}" if pairs else base)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"URL({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, URL | str):
            return self._text == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._text)


class Headers(Mapping[str, str]):
    """Response headers: names compared in any case; a repeated header's values
    are joined with ", " (:meth:`get_list` gives them one by one)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = [(name.lower(), value) for name, value in items]

    def get_list(self, name: str) -> list[str]:
        key = name.lower()
        return [value for k, value in self._items if k == key]

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._items))


class Response(ABC):
    """One answer; its body is read by iterating (a stream) or with :meth:`read`.
    Close it when done unless the body was read to the end."""

    def __init__(self, status_code: int, reason_phrase: str, headers: Headers, url: URL) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        #: Where the answer came from (after redirects, where they were followed).
        self.url = url
        self._content: bytes | None = None

    @abstractmethod
    def iter_raw(self) -> Iterator[bytes]:
        """The body as it arrives, without undoing any ``Content-Encoding``."""

    def iter_bytes(self) -> Iterator[bytes]:
        """The body, decoded.  Plain requests ask for no encoding, so it is the raw one."""
        return self.iter_raw()

    def read(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_bytes())
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    def json(self) -> Any:
        return json.loads(self.read())

    @abstractmethod
    def close(self) -> None:
        """Give the connection back (or drop it when the body was not read to its end)."""

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PlainResponse(Response):
    def __init__(self, pool: PlainTransport, conn: Connection, answer: Answer, url: URL) -> None:
        super().__init__(answer.status, answer.reason, Headers(answer.headers), url)
        self._pool = pool
        self._conn: Connection | None = conn
        self._answer = answer

    def iter_raw(self) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        if self._conn is None:
            raise TransportError("the response is closed")
        try:
            while chunk := self._answer.read(_READ_SIZE):
                yield chunk
        except (OSError, ProtocolError) as exc:
            self.close()
            raise _wrap(exc, connecting=False) from exc
        conn, self._conn = self._conn, None
        if self._answer.will_close:
            conn.close()
        else:
            self._pool.give_back(self.url, conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # its answer was not read to the end: it cannot be reused


class PlainTransport:
    """Sends requests with in-memory bodies over :mod:`atoll.oci.wire`; thread-safe."""

    def __init__(self, ssl_context: ssl.SSLContext, timeout: float, user_agent: str) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.user_agent = user_agent
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int | None], list[Connection]] = {}
        self._closed = False

    def send(
        self, method: str, url: URL, headers: Mapping[str, str], content: bytes | None = None
    ) -> Response:
        """Send and read the status and headers; the body is left to the response."""
        headers = {"User-Agent": self.user_agent, **headers}
        conn, reused = self._take(url)
        while True:
            try:
                if not reused:
                    conn.connect()
            except (OSError, ProtocolError) as exc:
                conn.close()
                raise _wrap(exc, connecting=True) from exc
            try:
                answer = conn.request(method, url.target, headers, content)
            except _STALE as exc:
                conn.close()
                if not reused:
                    raise _wrap(exc, connecting=False) from exc
                conn, reused = self._open(url), False
                continue
            except (OSError, ProtocolError) as exc:
                conn.close()
                raise _wrap(exc, connecting=False) from exc
            return _PlainResponse(self, conn, answer, url)

    def give_back(self, url: URL, conn: Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.setdefault(url.origin, []).append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                conn.close()

    def _take(self, url: URL) -> tuple[Connection, bool]:
        with self._lock:
            if self._closed:
                raise TransportError("the client is closed", connecting=True)
            idle = self._idle.get(url.origin)
            if idle:
                return idle.pop(), True
        return self._open(url), False

    def _open(self, url: URL) -> Connection:
        return Connection(url.scheme, url.host, url.port, self.timeout, self.ssl_context)


def _wrap(exc: BaseException, *, connecting: bool) -> TransportError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, socket.timeout | TimeoutError):
        return TimedOut(text or "timed out", connecting=connecting)
    if connecting:
        return ConnectFailed(text, connecting=True)
    return TransportError(text)
