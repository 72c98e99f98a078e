"""An HTTP proxy on loopback in front of a real registry, that misbehaves on request.

Each test programs rules; a rule matches a method and a regular expression
searched in the request path, fires a number of times (or always), and then
lets requests through untouched.  Every request is recorded so tests can assert
what the client asked (e.g. a ``Range`` header after a broken download).

Faults: an error status (with ``Retry-After``), a connection closed without
an answer, 401 always, a fixed body
instead of the registry's, a truncated or corrupted body, a wrong
``Docker-Content-Digest``, a connection dropped after K bytes, ignoring
``Range`` (the registry then answers 200 with the whole blob), and
``n``/``last`` pagination of tag lists (Distribution 2.8 ignores ``n``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Rule:
    kind: str
    pattern: re.Pattern[str]
    method: str | None
    #: How many more times the rule fires; None for always.
    times: int | None
    options: dict[str, object] = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        ranged = self.options.get("ranged")
        if self.kind == "drop" and "range" in headers and not ranged:
            return False
        if ranged and "range" not in headers:
            return False
        return self.pattern.search(path) is not None


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[SeenRequest] = []
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self.requests.clear()

    # --- programming ------------------------------------------------------------------

    def _add(
        self, kind: str, path: str, method: str | None, times: int | None, **options: object
    ) -> Rule:
        rule = Rule(kind, re.compile(path), method, times, dict(options))
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(
        self,
        path: str,
        status: int = 500,
        *,
        times: int | None = 1,
        retry_after: str | None = None,
        method: str | None = None,
    ) -> Rule:
        """Answer *status* (with ``Retry-After`` if given) *times* times, then pass."""
        return self._add("status", path, method, times, status=status, retry_after=retry_after)

    def deny(self, path: str = ".", *, method: str | None = None) -> Rule:
        """401 with a Basic challenge, always."""
        return self._add("status", path, method, None, status=401, challenge=True)

    def serve(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = "application/vnd.oci.image.manifest.v1+json",
        headers: dict[str, str] | None = None,
        method: str | None = "GET",
        times: int | None = None,
    ) -> Rule:
        """Answer 200 with *body* instead of asking the registry."""
        return self._add(
            "serve", path, method, times, body=body, content_type=content_type, headers=headers
        )

    def truncate(
        self, path: str, keep: int, *, times: int | None = None, ranged: bool = False
    ) -> Rule:
        """Pass the registry's body cut to *keep* bytes, with a matching Content-Length
        (*ranged*: only answers to ``Range`` requests)."""
        return self._add("truncate", path, "GET", times, keep=keep, ranged=ranged)

    def corrupt(
        self,
        path: str,
        offset: int = 0,
        *,
        times: int | None = None,
        ranged: bool = False,
        skip: int = 0,
    ) -> Rule:
        """Flip the bits of one byte of the registry's body (*ranged*: only of
        answers to ``Range`` requests; *skip*: let that many matches pass first)."""
        return self._add("corrupt", path, "GET", times, offset=offset, ranged=ranged, skip=skip)

    def wrong_digest(self, path: str, *, times: int | None = None) -> Rule:
        """Replace Docker-Content-Digest with the digest of something else."""
        return self._add("wrong_digest", path, None, times)

    def drop_after(
        self, path: str, nbytes: int, *, times: int | None = 1, ranged: bool = False
    ) -> Rule:
        """Send the headers and *nbytes* of the body, then close the connection.
        Requests with a ``Range`` header pass (so a resumed download works)
        unless *ranged*: then they are dropped too (a partial pull's ranges)."""
        return self._add("drop", path, "GET", times, nbytes=nbytes, ranged=ranged)

    def hang_up(self, path: str, *, times: int | None = 1, method: str | None = None) -> Rule:
        """Close the connection without answering."""
        return self._add("hang_up", path, method, times)

    def ignore_range(self, path: str, *, times: int | None = None) -> Rule:
        """Strip ``Range`` so the registry answers 200 with the whole body."""
        return self._add("ignore_range", path, "GET", times)

    def relative_location(self, *, times: int | None = None) -> Rule:
        """Rewrite absolute upload ``Location`` headers to paths, as some registries send."""
        return self._add("relative_location", r"/blobs/uploads/", None, times)

    def paginate_tags(self) -> Rule:
        """Serve tag lists page by page (``n``, ``last``, ``Link``), as newer registries do."""
        return self._add("paginate", r"/tags/list", "GET", None)

    def seen(self, method: str, path: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and re.search(path, r.path)]

    def _match(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self._lock:
            self.requests.append(SeenRequest(method, path, headers))
            for rule in self._rules:
                if rule.matches(method, path, headers):
                    skip = int(str(rule.options.get("skip", 0)))
                    if skip:
                        rule.options["skip"] = skip - 1
                        continue
                    if rule.times is not None:
                        rule.times -= 1
                    rule.hits += 1
                    return rule
        return None


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._handle()

        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            rule = proxy._match(self.command, self.path, headers)
            kind = rule.kind if rule else ""
            opts = rule.options if rule else {}
            if kind == "status":
                self._status(int(str(opts["status"])), opts)
                return
            if kind == "hang_up":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "serve":
                extra = dict(opts.get("headers") or {})  # type: ignore[call-overload]
                body_out = bytes(opts["body"])  # type: ignore[call-overload]
                out = [("Content-Type", str(opts["content_type"])), *extra.items()]
                self._send(200, out, body_out)
                return
            if kind == "paginate":
                self._paginate()
                return
            forward = self._forwarded()
            if kind == "ignore_range":
                forward = {k: v for k, v in forward.items() if k.lower() != "range"}
            status, reply_headers, reply = self._upstream(self.command, self.path, forward, body)
            if kind == "truncate":
                reply = reply[: int(str(opts["keep"]))]
            elif kind == "corrupt" and reply:
                offset = min(int(str(opts["offset"])), len(reply) - 1)
                reply = reply[:offset] + bytes([reply[offset] ^ 0xFF]) + reply[offset + 1 :]
            elif kind == "wrong_digest":
                wrong = "sha256:" + hashlib.sha256(b"not this manifest").hexdigest()
                reply_headers = [
                    (k, wrong if k.lower() == "docker-content-digest" else v)
                    for k, v in reply_headers
                ]
            elif kind == "relative_location":
                reply_headers = [
                    (k, re.sub(r"^https?://[^/]+", "", v) if k.lower() == "location" else v)
                    for k, v in reply_headers
                ]
            if kind == "drop":
                self._drop(status, reply_headers, reply, int(str(opts["nbytes"])))
                return
            if self.command == "HEAD":
                self._send(status, reply_headers, b"")
            else:
                clean = [(k, v) for k, v in reply_headers if k.lower() != "content-length"]
                self._send(status, clean, reply)

        def _forwarded(self) -> dict[str, str]:
            """The request's end-to-end headers; repeated ones (podman sends one
            Accept per media type) joined, as HTTP allows, so none is lost."""
            out: dict[str, str] = {}
            for key in dict.fromkeys(k.lower() for k in self.headers):
                if key not in _HOP_BY_HOP:
                    out[key] = ", ".join(self.headers.get_all(key) or [])
            return out

        def _upstream(
            self, method: str, path: str, headers: dict[str, str], body: bytes
        ) -> tuple[int, list[tuple[str, str]], bytes]:
            host, port = proxy.upstream.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                if body or method in ("POST", "PUT", "PATCH"):
                    headers = {**headers, "Content-Length": str(len(body))}
                conn.request(method, path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                kept = [
                    (k, v)
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length"
                ]
                return response.status, kept, data
            finally:
                conn.close()

        def _status(self, status: int, opts: dict[str, object]) -> None:
            headers = [("Content-Type", "application/json")]
            if opts.get("retry_after") is not None:
                headers.append(("Retry-After", str(opts["retry_after"])))
            if opts.get("challenge"):
                headers.append(("WWW-Authenticate", 'Basic realm="atoll-fault-proxy"'))
            code = {401: "UNAUTHORIZED", 429: "TOOMANYREQUESTS"}.get(status, "UNKNOWN")
            message = f"injected HTTP {status}"
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self._send(status, headers, body)

        def _drop(
            self, status: int, headers: list[tuple[str, str]], body: bytes, nbytes: int
        ) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:nbytes])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _paginate(self) -> None:
            split = urlsplit(self.path)
            query = parse_qs(split.query)
            forward = self._forwarded()
            status, headers, reply = self._upstream("GET", split.path, forward, b"")
            if status != 200:
                self._send(status, headers, reply)
                return
            data = json.loads(reply)
            tags = sorted(data.get("tags") or [])
            last = (query.get("last") or [""])[0]
            if last:
                tags = [t for t in tags if t > last]
            size = int((query.get("n") or ["0"])[0]) or len(tags)
            page, more = tags[:size], len(tags) > size
            out = [("Content-Type", "application/json")]
            if more:
                link = f"{split.path}?{urlencode({'n': size, 'last': page[-1]})}"
                out.append(("Link", f'<{link}>; rel="next"'))
            self._send(200, out, json.dumps({"name": data.get("name"), "tags": page}).encode())

    return Handler
