"""Manifest HEADs over http.client (atoll.oci.quickhead), against real registries.

RegistryClient.head_manifest sends its HEAD that way once it knows the
registry's /v2/ base and takes only a 200 from it; the rest goes through httpx
as before.  Which path a HEAD took is seen by counting what reaches httpx.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys

import pytest

from atoll.errors import NotFoundError
from atoll.oci.client import RegistryClient
from atoll.oci.manifest import ACCEPT_MANIFEST
from atoll.oci.quickhead import QuickHead
from atoll.oci.registries_conf import ssl_context
from helpers.registry import RegistryView

pytestmark = pytest.mark.integration


def _through_httpx(client: RegistryClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []
    send = client._send

    def spy(method: str, url: object, *args: object, **kwargs: object) -> object:
        sent.append(f"{method} {url}")
        return send(method, url, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "_send", spy)
    return sent


@pytest.mark.parametrize("kind", ["registry", "tls_registry", "auth_registry", "token_registry"])
def test_the_second_head_goes_around_httpx(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    view: RegistryView = request.getfixturevalue(kind)
    repo = view.new_repo()
    image = view.push_test_image(repo, "v1")
    with RegistryClient(view.host, view.ctx()) as client:
        sent = _through_httpx(client, monkeypatch)
        first = client.head_manifest(repo, "v1")  # pings, learns the credentials
        assert any(s.startswith("HEAD ") for s in sent)
        sent.clear()
        again = client.head_manifest(repo, "v1")
        assert again == first
        assert str(again.digest) == image.manifest_digest
        assert again.size == len(image.manifest)
        assert sent == [], "the HEAD went through httpx"
        # Missing: the quick answer (404) is not taken; httpx words the error.
        with pytest.raises(NotFoundError, match="checking manifest nope: not found"):
            client.head_manifest(repo, "nope")
        assert [s.split()[0] for s in sent] == ["HEAD"]


def test_tls_is_verified_with_the_clients_trust(tls_registry: RegistryView) -> None:
    repo = tls_registry.new_repo()
    tls_registry.push_test_image(repo, "v1")
    host, port = tls_registry.host.rsplit(":", 1)
    path = f"/v2/{repo}/manifests/v1"
    trusted = ssl_context(tls_registry.host, tls_registry.ctx(), verify=True)
    quick = QuickHead("https", host, int(port), trusted, 10.0, "test")
    answer = quick.head(path, {"Accept": ACCEPT_MANIFEST})
    assert answer is not None and answer.status == 200
    assert answer.headers["docker-content-digest"].startswith("sha256:")
    quick.close()
    # Without the test CA the certificate is refused: no answer, nothing sent.
    untrusted = QuickHead("https", host, int(port), ssl.create_default_context(), 10.0, "test")
    assert untrusted.head(path, {"Accept": ACCEPT_MANIFEST}) is None
    untrusted.close()


def test_no_answer_is_none_and_a_closed_quickhead_sends_nothing(registry: RegistryView) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    quick = QuickHead("http", "127.0.0.1", port, plain, 5.0, "test")
    assert quick.head("/v2/", {}) is None
    host, real_port = registry.host.rsplit(":", 1)
    live = QuickHead("http", host, int(real_port), plain, 5.0, "test")
    answer = live.head("/v2/", {})
    assert answer is not None and answer.status == 200
    live.close()
    assert live.head("/v2/", {}) is None
    with pytest.raises(ValueError, match="not an HTTP scheme"):
        QuickHead("ftp", host, 21, plain, 5.0, "test")


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


def test_a_check_with_a_known_base_never_imports_httpx(registry: RegistryView) -> None:
    """auto-update's later runs: every HEAD answered 200 over http.client, so the
    45 ms httpx import is never paid; a run that must ping still uses httpx."""
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "stable")  # not a version: no tag list
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK_TWICE, registry.host, f"{registry.host}/{repo}:stable"],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    assert proc.stdout.split() == [image.manifest_digest, "False", image.manifest_digest, "True"]
