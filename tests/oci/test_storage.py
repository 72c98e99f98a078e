"""containers-storage:REF — atoll.oci.transports.storage, through a real podman
whose store lives in a temporary directory (never the machine's default store)."""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.errors import NotFoundError, ToolMissingError, UnsupportedError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, ImageManifest, MediaType, parse_config, parse_manifest
from atoll.oci.transports import ImageName, ImageSource
from atoll.oci.transports.layout import LayoutSource
from atoll.oci.transports.storage import StorageDestination, StorageSource
from atoll.podman import isolated_environment
from helpers.images import build_image, list_files
from helpers.naive_copy import naive_copy
from helpers.parts import require_tool


@pytest.fixture(scope="session")
def podman_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """CONTAINERS_* variables pointing podman at a store of this test session."""
    require_tool("podman")
    root = tmp_path_factory.mktemp("podman")
    return {
        **isolated_environment(root),
        "graphroot": str(root / "graph"),
    }


@pytest.fixture
def podman(
    podman_store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SystemContext]:
    """A context whose podman uses the session store; its images are removed afterwards."""
    for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF"):
        monkeypatch.setenv(key, podman_store[key])
    ctx = SystemContext(environ=dict(os.environ))
    info = podman_cmd("info", "--format", "{{.Store.GraphRoot}}")
    assert info.strip() == podman_store["graphroot"], "podman must not use the default store"
    yield ctx
    podman_cmd("rmi", "--all", "--force")


def podman_cmd(*args: str) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode()


def read_blob(src: ImageSource, desc: Descriptor) -> bytes:
    with src.open_blob(desc) as chunks:
        return b"".join(chunks)


def layers_uncompressed(src: ImageSource) -> tuple[bytes, list[bytes]]:
    raw, declared = src.get_manifest()
    manifest = parse_manifest(raw, declared, where="test")
    assert isinstance(manifest, ImageManifest)
    layers = [gzip.decompress(read_blob(src, d)) for d in manifest.layers]
    return read_blob(src, manifest.config), layers


@pytest.mark.integration
def test_round_trip_through_podman(tmp_path: Path, podman: SystemContext) -> None:
    img = build_image(tmp_path / "a", "v1", labels={"containers.bootc": "1"})
    name = "containers-storage:localhost/atoll-test:v1"
    original = LayoutSource(ImageName.parse(f"oci:{img.layout}"), podman)
    with StorageDestination(ImageName.parse(name), podman) as dest:
        naive_copy(original, dest)
    assert "localhost/atoll-test:v1" in podman_cmd("images", "--format", "{{.Repository}}:{{.Tag}}")

    with StorageSource(ImageName.parse(name), podman) as back:
        config, layers = layers_uncompressed(back)
        # podman keeps the config (its digest is the image ID) and the layer
        # contents; it recompresses layers, so their digests are not kept.
        assert (config, layers) == layers_uncompressed(original)
        assert str(Digest.of(config)) == img.config_digest
        assert parse_config(config, where="test").bootable
        assert back.get_manifest()[1] == MediaType.OCI_MANIFEST
        assert StorageDestination.preserves_digests is False
    assert list_files(tmp_path / "a") == list_files(img.layout), "nothing left beside the input"


@pytest.mark.integration
def test_abort_loads_nothing(tmp_path: Path, podman: SystemContext) -> None:
    img = build_image(tmp_path / "a")
    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = SystemContext(tmpdir=staging, environ=podman.environ)
    dest = StorageDestination(ImageName.parse("containers-storage:localhost/never:v1"), ctx)
    naive_copy(LayoutSource(ImageName.parse(f"oci:{img.layout}"), ctx), dest, commit=False)
    dest.abort()
    assert podman_cmd("images", "--quiet").strip() == ""
    assert list_files(staging) == []


@pytest.mark.integration
def test_missing_image_is_not_found(podman: SystemContext) -> None:
    with pytest.raises(NotFoundError, match="no such image in podman's storage"):
        StorageSource(ImageName.parse("containers-storage:localhost/absent:v1"), podman)


def test_destination_needs_a_tag(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    with pytest.raises(UnsupportedError, match="by tag, not by digest"):
        StorageDestination(
            ImageName.parse(f"containers-storage:localhost/x@{digest}"), SystemContext()
        )


def test_podman_missing_is_reported(tmp_path: Path) -> None:
    ctx = SystemContext(environ={"PATH": str(tmp_path)})
    with pytest.raises(ToolMissingError, match="podman is not installed"):
        StorageDestination(ImageName.parse("containers-storage:localhost/x:v1"), ctx)
    with pytest.raises(ToolMissingError, match="podman is not installed"):
        StorageSource(ImageName.parse("containers-storage:localhost/x:v1"), ctx)
