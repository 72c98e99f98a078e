"""The registry client's requests over atoll.oci.wire (atoll.oci.plainhttp), against
real registries and a real HTTP server.

Requests whose body is in memory (pings, tokens, manifests, mounts) go over
atoll.oci.wire; streamed uploads and redirected blob downloads over httpx.  Which
path a request took is seen by counting what reaches the httpx transport.
"""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from atoll.errors import NotFoundError
from atoll.oci.client import RegistryClient
from atoll.oci.digest import Digest
from atoll.oci.httputil import is_tls_error
from atoll.oci.manifest import ACCEPT_MANIFEST
from atoll.oci.plainhttp import URL, ConnectFailed, Headers, PlainTransport, TransportError
from atoll.oci.registries_conf import ssl_context
from helpers.registry import RegistryView


def _through_httpx(client: RegistryClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []
    send = client._streams.send

    def spy(method: str, url: URL, *args: object, **kwargs: object) -> object:
        sent.append(f"{method} {url}")
        return send(method, url, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client._streams, "send", spy)
    return sent


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["registry", "tls_registry", "auth_registry", "token_registry"])
def test_a_mount_only_copy_goes_around_httpx(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    view: RegistryView = request.getfixturevalue(kind)
    repo = view.new_repo()
    image = view.push_test_image(repo, "v1")
    with RegistryClient(view.host, view.ctx()) as client:
        sent = _through_httpx(client, monkeypatch)
        head = client.head_manifest(repo, "v1")  # pings, learns the credentials
        assert str(head.digest) == image.manifest_digest
        assert head.size == len(image.manifest)
        fetched = client.get_manifest(repo, "v1")
        assert fetched.raw == image.manifest
        for digest in (image.config_digest, *image.layer_digests):
            assert client.mount_blob(f"{repo}-copy", Digest.parse(digest), repo).mounted
        put = client.put_manifest(f"{repo}-copy", "v1", fetched.raw, str(fetched.media_type))
        assert str(put) == image.manifest_digest
        assert client.list_tags(f"{repo}-copy") == ["v1"]
        with pytest.raises(NotFoundError, match="checking manifest nope: not found"):
            client.head_manifest(repo, "nope")
        assert sent == [], "a request went through httpx"
        # A blob download may be redirected to storage: httpx follows it.
        blob = image.layer_digests[0]
        assert Digest.of(client.fetch_blob(repo, Digest.parse(blob))) == Digest.parse(blob)
        assert [s.split()[0] for s in sent] == ["GET"]


@pytest.mark.integration
def test_tls_is_verified_with_the_clients_trust(tls_registry: RegistryView) -> None:
    repo = tls_registry.new_repo()
    tls_registry.push_test_image(repo, "v1")
    url = URL(f"https://{tls_registry.host}/v2/{repo}/manifests/v1")
    trusted = ssl_context(tls_registry.host, tls_registry.ctx(), verify=True)
    transport = PlainTransport(trusted, 10.0, "test")
    with transport.send("HEAD", url, {"Accept": ACCEPT_MANIFEST}) as answer:
        assert answer.status_code == 200
        assert answer.headers["Docker-Content-Digest"].startswith("sha256:")
    transport.close()
    # Without the test CA the certificate is refused before anything is sent.
    untrusted = PlainTransport(ssl.create_default_context(), 10.0, "test")
    with pytest.raises(ConnectFailed) as refused:
        untrusted.send("HEAD", url, {})
    assert refused.value.connecting and is_tls_error(refused.value)


def test_no_answer_and_a_closed_transport_raise(registry: RegistryView) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    transport = PlainTransport(plain, 5.0, "test")
    with pytest.raises(ConnectFailed, match="refused") as refused:
        transport.send("GET", URL(f"http://127.0.0.1:{port}/v2/"), {})
    assert refused.value.connecting
    live = URL(f"http://{registry.host}/v2/")
    assert transport.send("GET", live, {}).read() == b"{}"
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.send("GET", live, {})


class _ForgetfulHandler(http.server.BaseHTTPRequestHandler):
    """Keeps no connection open although it says nothing: like a server that
    dropped an idle keep-alive connection before the client used it again."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def forgetful() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForgetfulHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_connection_the_server_dropped_is_replaced(forgetful: str) -> None:
    transport = PlainTransport(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), 5.0, "test")
    for path in ("/a", "/b?x=1", "/c"):
        assert transport.send("GET", URL(forgetful + path), {}).read() == path.encode()
    transport.close()


def test_urls_and_headers() -> None:
    base = URL("https://Registry.Example.com:443/v2/")
    assert (base.scheme, base.host, base.port, base.path) == (
        "https",
        "registry.example.com",
        None,
        "/v2/",
    )
    assert URL("http://h:5000/v2/").origin == ("http", "h", 5000)
    mount = base.join("app/blobs/uploads/").copy_merge_params({"mount": "sha256:ab", "from": "a/b"})
    assert (
        str(mount)
        == "https://Registry.Example.com:443/v2/app/blobs/uploads/?mount=sha256%3Aab&from=a%2Fb"
    )
    assert mount.target == "/v2/app/blobs/uploads/?mount=sha256%3Aab&from=a%2Fb"
    assert str(mount.copy_merge_params({"from": "c"})).endswith("?mount=sha256%3Aab&from=c")
    realm = URL("https://auth.example.com/token?service=x").copy_add_params(
        [("scope", "a"), ("scope", "b")]
    )
    assert realm.target == "/token?service=x&scope=a&scope=b"
    assert (
        str(base.join("/v2/x/blobs/uploads/u?_state=s"))
        == "https://Registry.Example.com:443/v2/x/blobs/uploads/u?_state=s"
    )
    for bad in ("ftp://h/", "/v2/", "https://h:port/"):
        with pytest.raises(ValueError):
            URL(bad)
    headers = Headers([("WWW-Authenticate", "Bearer a"), ("www-authenticate", "Basic b")])
    assert headers.get_list("Www-Authenticate") == ["Bearer a", "Basic b"]
    assert headers["WWW-AUTHENTICATE"] == "Bearer a, Basic b"
    assert headers.get("Location") is None and list(headers) == ["www-authenticate"]


_CHECK_TWICE = """
import sys
from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.workloads.autoupdate.checks import check_references

host, ref = sys.argv[1], ImageReference.parse(sys.argv[2])
for bases in ({host: f"http://{host}/v2/"}, {}):
    result = check_references([ref], SystemContext(), bases=bases)[ref]
    assert result.error is None, result.error
    print(result.digest, "httpx" in sys.modules)
"""


@pytest.mark.integration
def test_an_update_check_never_imports_httpx(registry: RegistryView) -> None:
    """auto-update's runs, with a known base and with a ping: HEADs only."""
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "stable")  # not a version: no tag list
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK_TWICE, registry.host, f"{registry.host}/{repo}:stable"],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    assert proc.stdout.split() == [image.manifest_digest, "False", image.manifest_digest, "False"]
