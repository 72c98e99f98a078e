"""A small bearer-token server that a real Distribution registry trusts.

Distribution (``auth: token:``) accepts a JWT when its header carries an
``x5c`` chain whose certificate is in ``rootcertbundle``, the signature checks
out with that certificate's key, and the claims name the configured issuer and
service.  This server signs RS256 tokens with a self-signed certificate made
with ``cryptography``, checks Basic credentials, and grants what is asked to a
known user (nothing to an anonymous one).  Tests program it and count its
requests.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class TokenRequest:
    user: str | None
    scopes: tuple[str, ...]
    service: str | None


@dataclass
class TokenServer:
    issuer: str
    service: str
    users: dict[str, str]
    #: Seconds a token lives, as told to the client and written in ``exp``.
    expires_in: int = 300
    #: Which field carries the token: "token", "access_token" or "both".
    field_name: str = "both"
    #: Hand out this many tokens that grant nothing before good ones.
    useless_tokens: int = 0
    requests: list[TokenRequest] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atoll test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def write_root_bundle(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.expires_in = 300
            self.field_name = "both"
            self.useless_tokens = 0

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def issue(self, user: str | None, scopes: list[str]) -> tuple[str, int]:
        """A signed token granting *scopes* to a known *user*; nothing to anyone else."""
        with self._lock:
            useless = self.useless_tokens > 0
            if useless:
                self.useless_tokens -= 1
            expires_in = self.expires_in
        access = []
        if user is not None and not useless:
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}", expires_in


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: dict[str, object], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            user = None
            header = self.headers.get("Authorization", "")
            if header:
                user = _check_basic(header, server.users)
                if user is None:
                    self._reply(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                        {"WWW-Authenticate": 'Basic realm="atoll-test-token"'},
                    )
                    return
            service = query["service"][0] if query.get("service") else None
            with server._lock:
                server.requests.append(TokenRequest(user, tuple(scopes), service))
            token, expires_in = server.issue(user, scopes)
            body: dict[str, object] = {"expires_in": expires_in}
            if server.field_name in ("token", "both"):
                body["token"] = token
            if server.field_name in ("access_token", "both"):
                body["access_token"] = token
            self._reply(200, body, {})

    return Handler


def _check_basic(header: str, users: dict[str, str]) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user if users.get(user) == password else None
