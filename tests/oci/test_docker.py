"""The docker:// transport against a real registry; skopeo is the oracle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from atoll.errors import DigestMismatchError, NotFoundError
from atoll.oci.client import RegistryClient
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import copy_image
from atoll.oci.manifest import Descriptor, MediaType
from atoll.oci.transports import (
    ImageDestination,
    ImageName,
    MountOrigin,
    open_destination,
    open_source,
)
from atoll.oci.transports.docker import DockerDestination, DockerSource
from helpers.images import BuiltImage, build_image, build_multiarch
from helpers.registry import FaultProxyView, RegistryView

pytestmark = pytest.mark.integration


def _name(view: RegistryView, ref: str) -> ImageName:
    return ImageName.parse(f"docker://{view.host}/{ref}")


def _blob(image: BuiltImage, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _descriptors(image: BuiltImage) -> list[Descriptor]:
    manifest = json.loads(image.manifest)
    return [Descriptor.from_json(d, "test") for d in [manifest["config"], *manifest["layers"]]]


def _raw_manifest(view: RegistryView, ref: str) -> bytes:
    proc = view.skopeo("inspect", "--raw", *view.skopeo_args(), f"docker://{view.host}/{ref}")
    return proc.stdout.encode()


def _tag_exists(view: RegistryView, repo: str, tag: str) -> bool:
    with RegistryClient(view.host, view.ctx()) as client:
        try:
            client.head_manifest(repo, tag)
        except NotFoundError:
            return False
    return True


def test_source_reads_manifests_and_blobs(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(repo, "v1")
    with open_source(_name(registry, f"{repo}:v1"), registry.ctx()) as source:
        assert isinstance(source, DockerSource)
        raw, media_type = source.get_manifest()
        assert raw == image.manifest and media_type == MediaType.OCI_MANIFEST
        assert source.get_manifest(Digest.parse(image.manifest_digest))[0] == image.manifest
        for desc in _descriptors(image):
            with source.open_blob(desc) as chunks:
                assert b"".join(chunks) == _blob(image, str(desc.digest))
        assert source.mount_origin == MountOrigin(registry.host, repo)
        absent = Descriptor(MediaType.OCI_LAYER_GZIP, Digest.of(b"absent"), 6)
        with pytest.raises(NotFoundError, match="blob unknown"):
            source.open_blob(absent).__enter__()


def test_source_reference_with_digest_reads_by_digest(registry: RegistryView) -> None:
    repo = registry.new_repo()
    old = registry.push_test_image(repo, "v1", seed="old")
    registry.push_test_image(repo, "v1", seed="new")  # moves the tag
    name = _name(registry, f"{repo}:v1@{old.manifest_digest}")
    with DockerSource(name, registry.ctx()) as source:
        assert source.get_manifest()[0] == old.manifest


def _write_image(destination: ImageDestination, image: BuiltImage) -> None:
    """Do what the copy engine does, with blobs in parallel."""

    def put(desc: Descriptor) -> None:
        if not destination.has_blob(desc):
            destination.put_blob(desc, iter([_blob(image, str(desc.digest))]))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, _descriptors(image)))
    destination.put_manifest(image.manifest, MediaType.OCI_MANIFEST, top_level=True)


def test_destination_tags_only_at_commit(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(registry.new_repo(), seed="dest", layers=4)
    with open_destination(_name(registry, f"{repo}:v2"), registry.ctx()) as destination:
        assert isinstance(destination, DockerDestination)
        _write_image(destination, image)
        assert not _tag_exists(registry, repo, "v2")
        destination.commit()
    assert _raw_manifest(registry, f"{repo}:v2") == image.manifest


def test_destination_abort_leaves_no_tag(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(registry.new_repo(), seed="aborted")
    with (
        pytest.raises(RuntimeError),
        DockerDestination(_name(registry, f"{repo}:v1"), registry.ctx()) as destination,
    ):
        _write_image(destination, image)
        raise RuntimeError("the copy failed")
    assert not _tag_exists(registry, repo, "v1")


def test_destination_by_digest_only(registry: RegistryView) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(registry.new_repo(), seed="bydigest")
    name = _name(registry, f"{repo}@{image.manifest_digest}")
    with DockerDestination(name, registry.ctx()) as destination:
        _write_image(destination, image)
        destination.commit()
    assert _raw_manifest(registry, f"{repo}@{image.manifest_digest}") == image.manifest


def test_destination_refuses_a_manifest_other_than_the_named_digest(
    registry: RegistryView,
) -> None:
    repo = registry.new_repo()
    image = registry.push_test_image(registry.new_repo(), seed="x")
    other = Digest.of(b"another manifest")
    with DockerDestination(_name(registry, f"{repo}:v1@{other}"), registry.ctx()) as destination:
        _write_image(destination, image)
        with pytest.raises(DigestMismatchError, match=str(other)):
            destination.commit()
    assert not _tag_exists(registry, repo, "v1")


@pytest.mark.parametrize("fault", ["corrupt", "short", "long"])
def test_put_blob_rejects_a_stream_that_does_not_match(registry: RegistryView, fault: str) -> None:
    repo = registry.new_repo()
    data = hashlib.sha256(b"blob").digest() * 1000
    desc = Descriptor(MediaType.OCI_LAYER_GZIP, Digest.of(data), len(data))
    bad = {
        "corrupt": data[:100] + b"X" + data[101:],
        "short": data[:-1],
        "long": data + b"!",
    }[fault]

    def chunks() -> Iterator[bytes]:
        yield bad[:10_000]
        yield bad[10_000:]

    with DockerDestination(_name(registry, f"{repo}:v1"), registry.ctx()) as destination:
        with pytest.raises(DigestMismatchError):
            destination.put_blob(desc, chunks())
        assert not destination.has_blob(desc)
        destination.put_blob(desc, iter([data]))
        assert destination.has_blob(desc)


def test_instance_manifests_go_by_digest(registry: RegistryView, tmp_path: object) -> None:
    repo = registry.new_repo()
    layout = registry.tmp_path / "multi"
    index_digest, images = build_multiarch(layout)
    name = _name(registry, f"{repo}:multi")
    with DockerDestination(name, registry.ctx()) as destination:
        for image in images.values():
            for desc in _descriptors(image):
                destination.put_blob(desc, iter([_blob(image, str(desc.digest))]))
            destination.put_manifest(image.manifest, MediaType.OCI_MANIFEST, top_level=False)
            assert _raw_manifest(registry, f"{repo}@{image.manifest_digest}") == image.manifest
        index = (layout / "blobs" / "sha256" / index_digest.split(":")[1]).read_bytes()
        destination.put_manifest(index, MediaType.OCI_INDEX, top_level=True)
        destination.commit()
    assert _raw_manifest(registry, f"{repo}:multi") == index


def test_mount_blob_only_on_the_same_registry(registry: RegistryView) -> None:
    source_repo, repo = registry.new_repo(), registry.new_repo()
    image = registry.push_test_image(source_repo)
    layer = _descriptors(image)[1]
    with DockerDestination(_name(registry, f"{repo}:v1"), registry.ctx()) as destination:
        assert not destination.mount_blob(layer, MountOrigin("elsewhere.example", source_repo))
        assert not destination.has_blob(layer)
        assert destination.mount_blob(layer, MountOrigin(registry.host, source_repo))
        assert destination.has_blob(layer)
        # A refused mount keeps its session for the upload that follows.
        fresh_data = b"not in the registry"
        fresh = Descriptor(MediaType.OCI_LAYER_GZIP, Digest.of(fresh_data), len(fresh_data))
        assert not destination.mount_blob(fresh, MountOrigin(registry.host, source_repo))
        destination.put_blob(fresh, iter([fresh_data]))
        assert destination.has_blob(fresh)


def test_copy_between_repositories_mounts_blobs(registry: RegistryView) -> None:
    source_repo, repo = registry.new_repo(), registry.new_repo()
    image = registry.push_test_image(source_repo, "v1", layers=3)
    result = copy_image(
        _name(registry, f"{source_repo}:v1"),
        _name(registry, f"{repo}:copied"),
        src_ctx=registry.ctx(),
    )
    assert str(result.digest) == image.manifest_digest
    assert result.blobs_mounted == 4
    assert _raw_manifest(registry, f"{repo}:copied") == image.manifest


def test_copy_survives_a_dropped_connection(fault_proxy: FaultProxyView) -> None:
    source_repo = fault_proxy.new_repo()
    image = fault_proxy.registry.push_test_image(source_repo, "v1", layer_size=150_000)
    fault_proxy.drop_after(image.layer_digests[0], 50_000)
    fault_proxy.fail(r"/manifests/v1", 503, times=1)
    target = ImageName.parse(f"oci:{fault_proxy.tmp_path / 'out'}:v1")
    result = copy_image(
        ImageName.parse(f"docker://{fault_proxy.host}/{source_repo}:v1"),
        target,
        src_ctx=fault_proxy.ctx(),
    )
    assert str(result.digest) == image.manifest_digest
    assert fault_proxy.seen("GET", image.layer_digests[0])[-1].headers["range"] == "bytes=50000-"


def test_parallel_push_with_bearer_tokens(token_registry: RegistryView) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    layout = token_registry.tmp_path / "layout"
    image = build_image(layout, "v1", layers=6, seed="parallel")
    repo = token_registry.new_repo()
    tokens.requests.clear()
    result = copy_image(
        ImageName.parse(f"oci:{layout}:v1"),
        _name(token_registry, f"{repo}:v1"),
        src_ctx=token_registry.ctx(parallel=6),
    )
    assert str(result.digest) == image.manifest_digest
    assert result.blobs_copied == 7
    # One token per scope set, however many threads asked at once.
    scope_sets = [r.scopes for r in tokens.requests]
    assert len(scope_sets) == len(set(scope_sets)) <= 2
    assert _raw_manifest(token_registry, f"{repo}:v1") == image.manifest
