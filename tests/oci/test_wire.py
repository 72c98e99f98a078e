"""atoll.oci.wire's HTTP/1.1 against a loopback server that answers with fixed bytes:
how bodies end (chunked, Content-Length, the connection's end, none), interim
answers, keep-alive, and what a broken or missing answer raises.  The registry
paths over it are tested in test_plainhttp.py and test_client.py."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from atoll.oci.wire import Answer, Connection, Disconnected, ProtocolError


class _Server:
    """Accepts connections one after another; for each request head it reads, sends
    the next of the answers given for that connection, then closes it."""

    def __init__(self, connections: list[list[bytes]]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._connections = connections
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for answers in self._connections:
            conn, _ = self.sock.accept()
            with conn:
                buf = b""
                for answer in answers:
                    while b"\r\n\r\n" not in buf:
                        buf += conn.recv(65536)
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]  # fmt: skip
                    while len(buf) < sum(length):
                        buf += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + buf[: sum(length)])
                    buf = buf[sum(length) :]
                    conn.sendall(answer)

    def close(self) -> None:
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[list[_Server]]:
    servers: list[_Server] = []
    yield servers
    for server in servers:
        server.close()


def _connect(servers: list[_Server], *connections: list[bytes]) -> tuple[_Server, Connection]:
    server = _Server(list(connections))
    servers.append(server)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    conn = Connection("http", "127.0.0.1", server.port, 5.0, context)
    conn.connect()
    return server, conn


def _body(answer: Answer) -> bytes:
    parts = []
    while chunk := answer.read(7):
        parts.append(chunk)
    return b"".join(parts)


def test_bodies_end_as_the_answer_says_and_the_connection_is_kept(serve: list[_Server]) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n  folded\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nDocker-Content-Digest: sha256:x\r\n\r\n"
    empty = b"HTTP/1.1 204 No Content\r\n\r\n"
    server, conn = _connect(serve, [chunked, interim, head, empty])
    answer = conn.request("GET", "/v2/", {"Accept": "a"}, None)
    assert (answer.status, answer.reason) == (200, "OK")
    assert answer.headers == [("Transfer-Encoding", "chunked"), ("X-A", "1 folded")]
    assert _body(answer) == b"hello, world" and not answer.will_close
    answer = conn.request("POST", "/v2/r/blobs/uploads/?mount=x", {}, None)
    assert (answer.status, _body(answer)) == (201, b"abc")
    answer = conn.request("HEAD", "/v2/r/manifests/1", {}, None)
    assert answer.status == 200 and answer.read(10) == b"" and not answer.will_close
    answer = conn.request("PUT", "/v2/r/manifests/1", {"Content-Type": "t"}, b"{}")
    assert answer.status == 204 and answer.read(10) == b""
    conn.close()
    server.close()
    port = server.port
    assert server.requests == [
        b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept-Encoding: identity\r\n"
        b"Accept: a\r\n\r\n" % port,
        b"POST /v2/r/blobs/uploads/?mount=x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Accept-Encoding: identity\r\nContent-Length: 0\r\n\r\n" % port,
        b"HEAD /v2/r/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Accept-Encoding: identity\r\n\r\n" % port,
        b"PUT /v2/r/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept-Encoding: identity\r\n"
        b"Content-Type: t\r\nContent-Length: 2\r\n\r\n{}" % port,
    ]


def test_an_answer_without_length_or_keep_alive_ends_the_connection(
    serve: list[_Server],
) -> None:
    for answer_bytes, body in (
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"until the end"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n!", b"!"),
    ):
        _, conn = _connect(serve, [answer_bytes])
        answer = conn.request("GET", "/", {}, None)
        assert answer.will_close and _body(answer) == body
        conn.close()


def test_broken_answers_raise(serve: list[_Server]) -> None:
    _, conn = _connect(serve, [b""])
    with pytest.raises(Disconnected):
        conn.request("GET", "/", {}, None)
    conn.close()
    for broken, what in (
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "without a colon"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "invalid Content-Length"),
    ):
        _, conn = _connect(serve, [broken])
        with pytest.raises(ProtocolError, match=what):
            conn.request("GET", "/", {}, None)
        conn.close()
    _, conn = _connect(serve, [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
    answer = conn.request("GET", "/", {}, None)
    with pytest.raises(ProtocolError, match="5 bytes short"):
        _body(answer)
    conn.close()
    _, conn = _connect(serve, [])
    with pytest.raises(ValueError, match="line break"):
        conn.request("GET", "/", {"X": "a\r\nInjected: 1"}, None)
    conn.close()
