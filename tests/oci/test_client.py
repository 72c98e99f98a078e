"""RegistryClient against real Distribution registries, and against faults."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from atoll.errors import (
    AuthenticationError,
    DigestMismatchError,
    ManifestError,
    NetworkError,
    NotFoundError,
    RegistryError,
    TLSError,
    UnsupportedError,
)
from atoll.oci.auth import TokenCache, write_login
from atoll.oci.client import MAX_RETRY_WAIT, RegistryClient
from atoll.oci.digest import Digest
from atoll.oci.manifest import MediaType
from helpers.images import BuiltImage
from helpers.registry import FaultProxyView, RegistryView

pytestmark = pytest.mark.integration


def _blob(image: BuiltImage, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _client(view: RegistryView, **overrides: object) -> RegistryClient:
    return RegistryClient(view.host, view.ctx(**overrides))


def _tag(view: RegistryView, repo: str, tag: str, image: BuiltImage) -> None:
    """Tag an image with plain httpx, independently of atoll."""
    response = httpx.put(
        f"{view.url}/v2/{repo}/manifests/{tag}",
        content=image.manifest,
        headers={"Content-Type": MediaType.OCI_MANIFEST},
    )
    assert response.status_code == 201, response.text


class _Sleeps:
    def __init__(self, real: bool = False) -> None:
        self.delays: list[float] = []
        self.real = real

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.real:
            time.sleep(delay)


# --- plain registry ----------------------------------------------------------------


def test_ping_chooses_plain_http_for_an_insecure_registry(registry: RegistryView) -> None:
    with _client(registry) as client:
        assert str(client.ping()) == f"http://{registry.host}/v2/"


def test_registry_not_marked_insecure_fails_with_tls_error(
    registry: RegistryView, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    repo = registry.new_repo()
    with _client(registry, registries_conf=empty) as client, pytest.raises(TLSError) as info:
        client.get_manifest(repo, "v1")
    assert f"{registry.host}/{repo}" in str(info.value)
    assert "plain HTTP" in str(info.value)
    assert "insecure" in (info.value.hint or "") and "--tls-verify=false" in (info.value.hint or "")


def test_manifest_by_tag_and_by_digest(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "v1")
    with _client(registry) as client:
        by_tag = client.get_manifest(repo, "v1")
        assert by_tag.raw == image.manifest
        assert by_tag.media_type == MediaType.OCI_MANIFEST
        assert str(by_tag.digest) == image.manifest_digest
        by_digest = client.get_manifest(repo, image.manifest_digest)
        assert by_digest.raw == image.manifest
        head = client.head_manifest(repo, "v1")
        assert str(head.digest) == image.manifest_digest
        assert head.size == len(image.manifest)


def test_missing_things_are_not_found(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "v1")
    missing_digest = Digest.of(b"never pushed")
    with _client(registry) as client:
        with pytest.raises(NotFoundError, match="manifest unknown") as info:
            client.get_manifest(repo, "nope")
        assert info.value.exit_code == 12
        assert f"{registry.host}/{repo}" in str(info.value)
        assert "\n" not in str(info.value)
        with pytest.raises(NotFoundError, match="blob unknown"):
            client.open_blob(repo, missing_digest)
        with pytest.raises(NotFoundError):
            client.get_manifest("no/such-repo", "latest")
        with pytest.raises(NotFoundError):
            client.head_manifest(repo, "nope")
        assert not client.blob_exists(repo, missing_digest)
        assert client.blob_exists(repo, Digest.parse(image.layer_digests[0]))


def test_blob_streams_in_chunks(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(repo, layer_size=300_000)
    layer = image.layer_digests[0]
    expected = _blob(image, layer)
    with RegistryClient(registry.host, registry.ctx(), read_chunk_size=65536) as client:
        with client.open_blob(repo, Digest.parse(layer), len(expected)) as stream:
            chunks = list(stream)
        assert b"".join(chunks) == expected
        assert len(chunks) > 1 and max(len(c) for c in chunks) <= 65536
        config = client.fetch_blob(repo, Digest.parse(image.config_digest))
        assert json.loads(config)["architecture"] == "amd64"


def test_tags_with_many_tags_and_a_small_page_size(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "t00")
    tags = {f"t{i:02d}" for i in range(25)}
    for tag in sorted(tags - {"t00"}):
        _tag(registry, repo, tag, image)
    with _client(registry) as client:
        assert sorted(client.list_tags(repo, page_size=3)) == sorted(tags)
        assert sorted(client.list_tags(repo)) == sorted(tags)


def test_tags_follow_link_pages(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, "a00")
    tags = {f"a{i:02d}" for i in range(10)}
    for tag in sorted(tags - {"a00"}):
        _tag(fault_proxy.registry, repo, tag, image)
    fault_proxy.paginate_tags()
    with _client(fault_proxy) as client:
        assert client.list_tags(repo, page_size=4) == sorted(tags)
    pages = fault_proxy.seen("GET", r"/tags/list")
    assert len(pages) == 3
    assert "last=a03" in pages[1].path and "last=a07" in pages[2].path


def test_catalog_follows_pages(fault_proxy: FaultProxyView) -> None:
    repos = {fault_proxy.new_repo("catalog") for _ in range(3)}
    for repo in repos:
        fault_proxy.registry.push_test_image(repo, layers=1, layer_size=10)
    with _client(fault_proxy) as client:
        listed = client.catalog(page_size=2)
    assert repos <= set(listed)
    assert len(listed) == len(set(listed))
    assert len(fault_proxy.seen("GET", r"/v2/_catalog")) >= 2


def test_delete_by_tag_and_by_digest(registry: RegistryView) -> None:
    repo = registry.new_repo()
    first = registry.push_test_image(repo, "one", seed="one")
    second = registry.push_test_image(repo, "two", seed="two")
    with _client(registry) as client:
        assert str(client.delete_manifest(repo, "one")) == first.manifest_digest
        with pytest.raises(NotFoundError):
            client.get_manifest(repo, "one")
        client.delete_manifest(repo, second.manifest_digest)
        with pytest.raises(NotFoundError):
            client.get_manifest(repo, "two")
        with pytest.raises(NotFoundError):
            client.delete_manifest(repo, "one")


def test_delete_refused_by_the_registry(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.fail(r"/manifests/", 405, method="DELETE", times=None)
    with _client(fault_proxy) as client, pytest.raises(UnsupportedError) as info:
        client.delete_manifest(repo, "v1")
    assert "does not allow deletes" in str(info.value)
    assert "REGISTRY_STORAGE_DELETE_ENABLED" in (info.value.hint or "")


def test_cross_repository_mount(registry: RegistryView) -> None:
    source, target = registry.new_repo(), registry.new_repo()
    image = registry.push_test_image(source)
    layer = Digest.parse(image.layer_digests[0])
    with _client(registry) as client:
        assert not client.blob_exists(target, layer)
        result = client.mount_blob(target, layer, source)
        assert result.mounted and result.session is None
        assert client.blob_exists(target, layer)
        # A blob the registry does not hold: it opens an upload session instead.
        data = b"fresh blob content"
        fresh = Digest.of(data)
        fallback = client.mount_blob(target, fresh, source)
        assert not fallback.mounted and fallback.session is not None
        client.upload_blob(target, fresh, [data], size=len(data), session=fallback.session)
        assert client.fetch_blob(target, fresh, len(data)) == data


def test_monolithic_and_chunked_uploads(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    data = hashlib.sha256(b"seed").digest() * 160  # 5120 bytes
    small, large = data[:900], data
    with RegistryClient(
        fault_proxy.host,
        fault_proxy.ctx(),
        chunked_upload_threshold=1000,
        upload_chunk_size=1024,
    ) as client:
        client.upload_blob(repo, Digest.of(small), [small[:500], small[500:]], size=len(small))
        assert not fault_proxy.seen("PATCH", repo)
        client.upload_blob(repo, Digest.of(large), [large[:3000], large[3000:]], size=len(large))
        patches = fault_proxy.seen("PATCH", repo)
        assert len(patches) == 5
        assert [p.headers["content-range"] for p in patches[:2]] == ["0-1023", "1024-2047"]
        assert client.fetch_blob(repo, Digest.of(small), len(small)) == small
        assert client.fetch_blob(repo, Digest.of(large), len(large)) == large


def test_upload_with_relative_location(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    fault_proxy.relative_location()
    data = b"relative location blob" * 50
    with RegistryClient(fault_proxy.host, fault_proxy.ctx(), upload_chunk_size=300) as client:
        client.upload_blob(repo, Digest.of(data), [data], chunked=True)
        assert client.fetch_blob(repo, Digest.of(data)) == data
    assert len(fault_proxy.seen("PATCH", repo)) == 4


def test_upload_of_wrong_content_is_refused_by_the_registry(registry: RegistryView) -> None:
    repo = registry.new_repo()
    claimed = Digest.of(b"what was promised")
    with _client(registry) as client:
        with pytest.raises(RegistryError, match=r"DIGEST_INVALID|digest"):
            client.upload_blob(repo, claimed, [b"something else"])
        assert not client.blob_exists(repo, claimed)


def test_put_manifest_by_tag(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "v1")
    with _client(registry) as client:
        digest = client.put_manifest(repo, "copy", image.manifest, MediaType.OCI_MANIFEST)
    assert str(digest) == image.manifest_digest
    raw = registry.skopeo(
        "inspect", "--raw", *registry.skopeo_args(), f"docker://{registry.host}/{repo}:copy"
    )
    assert raw.stdout.encode() == image.manifest


def test_connection_refused_is_a_network_error(registry: RegistryView) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = registry.ctx(tls_verify=False, retries=2)
    with RegistryClient(f"127.0.0.1:{port}", ctx) as client, pytest.raises(NetworkError) as info:
        client.get_manifest("some/repo", "latest")
    assert info.value.exit_code == 22
    assert f"127.0.0.1:{port}/some/repo" in str(info.value)
    assert "cannot connect" in str(info.value)


# --- Basic auth ---------------------------------------------------------------------


def test_basic_auth_with_credentials(auth_registry: RegistryView) -> None:
    repo = auth_registry.new_repo()
    image = auth_registry.push_test_image(repo, "v1")
    with _client(auth_registry) as client:
        assert client.get_manifest(repo, "v1").raw == image.manifest
        assert repo in client.catalog()


def test_basic_auth_credentials_from_auth_file(auth_registry: RegistryView) -> None:
    repo = auth_registry.new_repo()
    image = auth_registry.push_test_image(repo, "v1")
    ctx = auth_registry.ctx(credentials=None)
    write_login(auth_registry.host, auth_registry.username or "", auth_registry.password or "", ctx)
    with RegistryClient(auth_registry.host, ctx) as client:
        assert client.get_manifest(repo, "v1").raw == image.manifest


def test_basic_auth_refused(auth_registry: RegistryView) -> None:
    repo = auth_registry.new_repo()
    with (
        _client(auth_registry, credentials="atoll:wrong") as client,
        pytest.raises(AuthenticationError) as info,
    ):
        client.get_manifest(repo, "v1")
    error = info.value
    assert error.exit_code == 21
    assert f"{auth_registry.host}/{repo}" in str(error)
    assert "refused" in str(error) and "\n" not in str(error)
    assert "--authfile" in (error.hint or "") and "--creds" in (error.hint or "")
    with (
        _client(auth_registry, credentials=None) as client,
        pytest.raises(AuthenticationError, match="authentication required"),
    ):
        client.get_manifest(repo, "v1")


# --- Bearer tokens ------------------------------------------------------------------


def test_bearer_token_is_fetched_once_and_reused(token_registry: RegistryView) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    repo = token_registry.new_repo()
    image = token_registry.push_test_image(repo, "v1")
    tokens.requests.clear()
    with _client(token_registry) as client:
        assert client.get_manifest(repo, "v1").raw == image.manifest
        assert client.blob_exists(repo, Digest.parse(image.layer_digests[0]))
        with ThreadPoolExecutor(8) as pool:
            blobs = list(
                pool.map(
                    lambda d: client.fetch_blob(repo, Digest.parse(d)),
                    [*image.layer_digests, image.config_digest] * 4,
                )
            )
        assert blobs[0] == _blob(image, image.layer_digests[0])
        assert len(tokens.requests) == 1
        assert tokens.requests[0].user == token_registry.username
        assert tokens.requests[0].scopes == (f"repository:{repo}:pull",)
        # Pushing needs another scope, hence another token.
        client.start_upload(repo)
        assert len(tokens.requests) == 2
        assert tokens.requests[1].scopes == (f"repository:{repo}:pull,push",)


def test_bearer_token_is_renewed_after_it_expires(token_registry: RegistryView) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    repo = token_registry.new_repo()
    token_registry.push_test_image(repo, "v1")
    tokens.requests.clear()
    tokens.expires_in = 120
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    with RegistryClient(token_registry.host, token_registry.ctx(), token_cache=cache) as client:
        client.head_manifest(repo, "v1")
        now[0] = 100.0
        client.head_manifest(repo, "v1")
        assert len(tokens.requests) == 1
        now[0] = 121.0
        client.head_manifest(repo, "v1")
        assert len(tokens.requests) == 2


def test_refused_token_is_replaced_once(token_registry: RegistryView) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    repo = token_registry.new_repo()
    image = token_registry.push_test_image(repo, "v1")
    tokens.requests.clear()
    tokens.useless_tokens = 1
    tokens.field_name = "access_token"
    with _client(token_registry) as client:
        assert client.get_manifest(repo, "v1").raw == image.manifest
    assert len(tokens.requests) == 2


def test_bearer_without_credentials_is_refused(token_registry: RegistryView) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    repo = token_registry.new_repo()
    token_registry.push_test_image(repo, "v1")
    tokens.requests.clear()
    with (
        _client(token_registry, credentials=None) as client,
        pytest.raises(AuthenticationError, match="authentication required") as info,
    ):
        client.get_manifest(repo, "v1")
    assert info.value.exit_code == 21
    assert [r.user for r in tokens.requests] == [None, None], "one anonymous retry, then give up"


def test_bearer_with_wrong_password(token_registry: RegistryView) -> None:
    repo = token_registry.new_repo()
    with (
        _client(token_registry, credentials="atoll:wrong") as client,
        pytest.raises(AuthenticationError, match=r"getting a token from 127\.0\.0\.1") as info,
    ):
        client.get_manifest(repo, "v1")
    assert "refused" in str(info.value)


def test_bearer_catalog_scope(token_registry: RegistryView) -> None:
    repo = token_registry.new_repo()
    token_registry.push_test_image(repo, "v1")
    with _client(token_registry) as client:
        assert repo in client.catalog()


# --- TLS ----------------------------------------------------------------------------


def test_tls_with_ca_in_certs_d(tls_registry: RegistryView) -> None:
    repo = tls_registry.new_repo()
    image = tls_registry.push_test_image(repo, "v1")
    with _client(tls_registry) as client:
        assert client.ping().scheme == "https"
        assert client.get_manifest(repo, "v1").raw == image.manifest


def test_tls_with_cert_dir(tls_registry: RegistryView, tmp_path: Path) -> None:
    repo = tls_registry.new_repo()
    image = tls_registry.push_test_image(repo, "v1")
    ctx = tls_registry.ctx(cert_dir=tls_registry.server.cert_dir)
    with RegistryClient(tls_registry.host, ctx) as client:
        assert client.get_manifest(repo, "v1").raw == image.manifest


def test_tls_without_ca_fails_and_tls_verify_false_works(
    tls_registry: RegistryView, tmp_path: Path
) -> None:
    repo = tls_registry.new_repo()
    image = tls_registry.push_test_image(repo, "v1")
    empty = tmp_path / "no-certs"
    empty.mkdir()
    with _client(tls_registry, cert_dir=empty) as client, pytest.raises(TLSError) as info:
        client.get_manifest(repo, "v1")
    assert info.value.exit_code == 23
    assert tls_registry.host in str(info.value)
    assert "certs.d" in (info.value.hint or "") and "--cert-dir" in (info.value.hint or "")
    with _client(tls_registry, cert_dir=empty, tls_verify=False) as client:
        assert client.ping().scheme == "https"
        assert client.get_manifest(repo, "v1").raw == image.manifest


# --- faults -------------------------------------------------------------------------


def test_truncated_blob_is_a_digest_mismatch(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, layer_size=20_000)
    layer = image.layer_digests[0]
    fault_proxy.truncate(layer, keep=1000)
    with _client(fault_proxy) as client, pytest.raises(DigestMismatchError) as info:
        client.fetch_blob(repo, Digest.parse(layer), len(_blob(image, layer)))
    assert "truncated" in str(info.value) and info.value.exit_code == 11


def test_corrupted_blob_is_a_digest_mismatch(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo)
    fault_proxy.corrupt(image.config_digest, offset=5)
    with _client(fault_proxy) as client, pytest.raises(DigestMismatchError, match="mismatch"):
        client.fetch_blob(repo, Digest.parse(image.config_digest))


def test_server_errors_are_retried(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.fail(r"/manifests/v1", 500, times=2)
    sleeps = _Sleeps()
    with RegistryClient(fault_proxy.host, fault_proxy.ctx(retry_delay=0.5), sleep=sleeps) as c:
        assert c.get_manifest(repo, "v1").raw == image.manifest
    assert len(fault_proxy.seen("GET", r"/manifests/v1")) == 3
    assert sleeps.delays == [0.5, 1.0], "exponential backoff"


def test_broken_connections_are_retried(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.hang_up(r"/manifests/v1", times=2)
    with _client(fault_proxy) as client:
        assert client.get_manifest(repo, "v1").raw == image.manifest
    assert len(fault_proxy.seen("GET", r"/manifests/v1")) == 3
    fault_proxy.hang_up(r"/manifests/v1", times=None)
    with _client(fault_proxy, retries=2) as client, pytest.raises(NetworkError) as info:
        client.get_manifest(repo, "v1")
    assert "connection broke" in str(info.value) and repo in str(info.value)


def test_retries_give_up(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.fail(r"/manifests/v1", 503, times=None)
    with _client(fault_proxy, retries=3) as client, pytest.raises(RegistryError) as info:
        client.get_manifest(repo, "v1")
    assert "HTTP 503" in str(info.value) and "injected" in str(info.value)
    assert len(fault_proxy.seen("GET", r"/manifests/v1")) == 3


def test_too_many_requests_honours_retry_after(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.fail(r"/manifests/v1", 429, times=1, retry_after="1")
    fault_proxy.fail(r"/blobs/", 429, times=1, retry_after="86400")
    sleeps = _Sleeps(real=False)
    with RegistryClient(fault_proxy.host, fault_proxy.ctx(), sleep=sleeps) as client:
        started = time.monotonic()
        assert client.get_manifest(repo, "v1").raw == image.manifest
        assert client.fetch_blob(repo, Digest.parse(image.config_digest))
    assert sleeps.delays == [1.0, MAX_RETRY_WAIT]
    assert time.monotonic() - started < 5
    real = _Sleeps(real=True)
    fault_proxy.fail(r"/manifests/v1", 429, times=1, retry_after="1")
    with RegistryClient(fault_proxy.host, fault_proxy.ctx(), sleep=real) as client:
        started = time.monotonic()
        client.get_manifest(repo, "v1")
        assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("server_honours_range", [True, False])
def test_dropped_blob_download_is_resumed(
    fault_proxy: FaultProxyView, server_honours_range: bool
) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, layer_size=200_000)
    layer = image.layer_digests[0]
    expected = _blob(image, layer)
    fault_proxy.drop_after(layer, 70_000)
    if not server_honours_range:
        fault_proxy.ignore_range(layer)
    with (
        _client(fault_proxy) as client,
        client.open_blob(repo, Digest.parse(layer), len(expected)) as stream,
    ):
        data = b"".join(stream)
        assert stream.resumed == 1
    assert hashlib.sha256(data).hexdigest() == layer.split(":")[1]
    ranged = [r for r in fault_proxy.seen("GET", layer) if "range" in r.headers]
    assert [r.headers["range"] for r in ranged] == ["bytes=70000-"]


def test_unauthorized_without_credentials(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    fault_proxy.deny()
    with _client(fault_proxy) as client, pytest.raises(AuthenticationError) as info:
        client.get_manifest(repo, "v1")
    assert f"{fault_proxy.host}/{repo}" in str(info.value)
    assert "authentication required" in str(info.value)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b'{"schemaVersion": 2, "layers": [', "not valid JSON"),
        (b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "exceeded max depth"),
        (b'{"schemaVersion": 2, "schemaVersion": 1}', "duplicate key"),
    ],
)
def test_malformed_manifest_is_a_manifest_error(
    fault_proxy: FaultProxyView, body: bytes, complaint: str
) -> None:
    repo = fault_proxy.new_repo()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    fault_proxy.serve(r"/manifests/v1", body, headers={"Docker-Content-Digest": digest})
    with _client(fault_proxy) as client, pytest.raises(ManifestError) as info:
        client.get_manifest(repo, "v1")
    assert complaint in str(info.value) and repo in str(info.value)


def test_wrong_docker_content_digest(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.wrong_digest(r"/manifests/")
    with _client(fault_proxy) as client:
        with pytest.raises(DigestMismatchError, match="Docker-Content-Digest"):
            client.get_manifest(repo, "v1")
        # By digest the reference is what counts, and the content matches it.
        assert client.get_manifest(repo, image.manifest_digest).raw == image.manifest


def test_manifest_that_does_not_match_the_requested_digest(fault_proxy: FaultProxyView) -> None:
    repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(repo, "v1")
    fault_proxy.serve(r"/manifests/sha256:", b'{"schemaVersion": 2}')
    with _client(fault_proxy) as client, pytest.raises(DigestMismatchError, match="reference"):
        client.get_manifest(repo, image.manifest_digest)
