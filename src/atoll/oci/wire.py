"""One HTTP/1.1 connection to a registry, over a socket (TLS when the URL says
``https``): what :class:`atoll.oci.plainhttp.PlainTransport` sends its requests
over.

The standard library's ``http.client`` would do, but importing it loads the
``email`` package (26 modules, a fifth of the imports of a copy that only mounts
blobs); the part of HTTP/1.1 that the registry API needs is small:

- The request: ``METHOD TARGET HTTP/1.1``, ``Host``, ``Accept-Encoding:
  identity``, the caller's headers, and ``Content-Length`` when there is a body
  or the method carries one (POST, PUT, PATCH).  Header values must not contain
  CR or LF (ValueError).
- The answer: interim ``1xx`` answers are skipped; the status line, then at most
  :data:`MAX_HEADERS` header lines of at most :data:`MAX_LINE` bytes each.  The
  body ends where ``Transfer-Encoding: chunked`` says, else after
  ``Content-Length`` bytes, else when the server closes the connection; an
  answer to HEAD, and a 1xx, 204 or 304 answer, has none.
- The connection serves the next request when the body was read to its end and
  neither side said ``Connection: close`` (an HTTP/1.0 answer must say
  ``keep-alive``).

Errors are ``OSError`` (the socket's, TLS's ``ssl.SSLError``, and
:class:`Disconnected` when the server closed the connection before answering,
as servers do with idle keep-alive connections) or :class:`ProtocolError` for an
answer that is not HTTP/1.x.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator, Mapping

#: The longest status or header line read, in bytes (http.client's limit).
MAX_LINE = 65536
#: The most header lines an answer may have (http.client's limit).
MAX_HEADERS = 100
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x, or it ended in the middle."""


class Disconnected(ConnectionResetError):
    """The server closed the connection without answering."""


class Connection:
    """One connection to ``host:port``; sends one request at a time."""

    def __init__(
        self, scheme: str, host: str, port: int | None, timeout: float, context: ssl.SSLContext
    ) -> None:
        self.host = host
        self.port = port or (443 if scheme == "https" else 80)
        self._tls = context if scheme == "https" else None
        self._timeout = timeout
        # RFC 9110's Host: the port only when it is not the scheme's default.
        name = f"[{host}]" if ":" in host else host
        self._host_header = f"{name}:{port}" if port else name
        self._sock: socket.socket | None = None
        self._reader: _Reader | None = None

    def connect(self) -> None:
        # An ASCII name as bytes: getaddrinfo and ssl encode a str with the "idna"
        # codec, whose import (stringprep, unicodedata) costs more than a connection.
        host: str | bytes = self.host.encode("ascii") if self.host.isascii() else self.host
        sock = socket.create_connection((host, self.port), self._timeout)  # type: ignore[arg-type]
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = _Reader(sock)

    def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> Answer:
        """Send a request and read the answer's status and headers."""
        if self._sock is None or self._reader is None:
            raise Disconnected("the connection is closed")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        given = {name.lower() for name in headers}
        if "accept-encoding" not in given:
            lines.append("Accept-Encoding: identity")
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} has a line break")
            lines.append(f"{name}: {value}")
        if (body is not None or method in _BODY_METHODS) and "content-length" not in given:
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._sock.sendall(head + body if body else head)
        return self._reader.answer(method)

    def close(self) -> None:
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            sock.close()


class Answer:
    """A status, headers, and a body read with :meth:`read`."""

    def __init__(
        self, reader: _Reader, status: int, reason: str, headers: list[tuple[str, str]], *,
        length: int | None, chunked: bool, will_close: bool,
    ) -> None:  # fmt: skip
        self.status = status
        self.reason = reason
        self.headers = headers
        #: True when the connection cannot carry another request after this answer.
        self.will_close = will_close
        self._reader = reader
        self._left = length
        self._chunks: Iterator[bytes] | None = reader.chunks() if chunked else None
        self.done = length == 0

    def read(self, size: int) -> bytes:
        """Up to *size* bytes of the body; b"" at its end."""
        if self.done:
            return b""
        if self._chunks is not None:
            data = next(self._chunks, b"")
        elif self._left is None:
            data = self._reader.read_some(size)
        else:
            data = self._reader.read_some(min(size, self._left))
            if not data:
                raise ProtocolError(f"the answer ended {self._left} bytes short")
            self._left -= len(data)
        if not data or self._left == 0:
            self.done = True
        return data


class _Reader:
    """Buffered reads from the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _fill(self) -> bytes:
        data = self._sock.recv(65536)
        self._buf += data
        return data

    def line(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_LINE:
                raise ProtocolError(f"a line of the answer is longer than {MAX_LINE} bytes")
            if not self._fill():
                line, self._buf = self._buf, b""
                return line
        line, self._buf = self._buf[: end + 1], self._buf[end + 1 :]
        if len(line) > MAX_LINE:
            raise ProtocolError(f"a line of the answer is longer than {MAX_LINE} bytes")
        return line

    def read_some(self, size: int) -> bytes:
        if not self._buf:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise ProtocolError("the answer ended in the middle of a chunk")
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def answer(self, method: str) -> Answer:
        while True:
            status_line = self.line()
            if not status_line:
                raise Disconnected("the server closed the connection without answering")
            version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise ProtocolError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
            headers = self._headers()
            status = int(code)
            if status >= 200 or status == 101:
                break
        fields = {name.lower(): value for name, value in headers}
        connection = fields.get("connection", "").lower()
        keep = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        length: int | None = None
        if method == "HEAD" or status in (204, 304) or status < 200:
            length = 0
        elif not chunked and "content-length" in fields:
            try:
                length = int(fields["content-length"])
            except ValueError:
                raise ProtocolError(
                    f"invalid Content-Length {fields['content-length']!r}"
                ) from None
        delimited = chunked or length is not None
        return Answer(
            self, status, reason, headers, length=length, chunked=chunked and length is None,
            will_close=not keep or not delimited,
        )  # fmt: skip

    def _headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while (line := self.line()) not in (b"\r\n", b"\n", b""):
            if len(headers) >= MAX_HEADERS:
                raise ProtocolError(f"the answer has more than {MAX_HEADERS} headers")
            text = line.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and headers:  # an obsolete folded continuation
                name, value = headers.pop()
                headers.append((name, f"{value} {text.strip()}"))
                continue
            name, colon, value = text.partition(":")
            if not colon:
                raise ProtocolError(f"a header line without a colon: {text[:80]!r}")
            headers.append((name.strip(), value.strip()))
        return headers

    def chunks(self) -> Iterator[bytes]:
        while True:
            size_line = self.line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"invalid chunk size {size_line[:20]!r}") from None
            if size == 0:
                self._headers()  # the trailer
                return
            yield self.exactly(size)
            self.exactly(2)  # CRLF
