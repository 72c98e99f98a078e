from __future__ import annotations

import json
import re
from typing import Any

import pytest

from atoll.errors import ManifestError, NoMatchingPlatformError, UnsupportedError
from atoll.oci.digest import Digest, Verifier
from atoll.oci.manifest import (
    ImageIndex,
    ImageManifest,
    MediaType,
    Platform,
    parse_config,
    parse_manifest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _manifest(media_type: str | None = MediaType.OCI_MANIFEST) -> bytes:
    data: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": MediaType.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": MediaType.OCI_LAYER_GZIP, "digest": D2, "size": 20}],
    }
    if media_type:
        data["mediaType"] = media_type
    return json.dumps(data).encode()


def _index(*platforms: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_INDEX,
            "manifests": [
                {"mediaType": MediaType.OCI_MANIFEST, "digest": d, "size": 1, "platform": p}
                for d, p in zip((D1, D2, D3), platforms, strict=False)
            ],
        }
    ).encode()


def test_image_manifest_keeps_raw_bytes() -> None:
    raw = _manifest()
    m = parse_manifest(raw, where="test")
    assert isinstance(m, ImageManifest)
    assert m.raw is raw
    assert m.digest == Digest.of(raw)
    assert [str(b.digest) for b in m.blobs()] == [D1, D2]


def test_media_type_from_structure_when_absent() -> None:
    m = parse_manifest(_manifest(None), where="test")
    assert m.media_type == MediaType.OCI_MANIFEST


def test_served_type_contradicting_body_is_rejected() -> None:
    with pytest.raises(ManifestError, match="served as"):
        parse_manifest(_manifest(), MediaType.DOCKER_MANIFEST, where="test")


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b"{not json", ManifestError, "not valid JSON"),
        (b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ManifestError, "max depth"),
        (b'{"schemaVersion": 2, "schemaVersion": 2}', ManifestError, "duplicate key"),
        (b"\xef\xbb\xbf{}", ManifestError, "byte-order mark"),
        (b"[]", ManifestError, "not a JSON object"),
        (b'{"schemaVersion": 1, "fsLayers": []}', UnsupportedError, "schema 1"),
        (b'{"schemaVersion": 2, "layers": []}', ManifestError, "no 'config'"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1},
                    "layers": [],
                }
            ).encode(),
            ManifestError,
            "invalid digest",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "config": {"mediaType": "x", "digest": D1, "size": -1},
                    "layers": [],
                }
            ).encode(),
            ManifestError,
            "non-negative",
        ),
        (b'{"schemaVersion": 2, "mediaType": "text/plain"}', UnsupportedError, "text/plain"),
    ],
)
def test_malformed_manifests(raw: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_manifest(raw, where="test")


def test_platform_selection() -> None:
    index = parse_manifest(
        _index(
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux", "architecture": "arm64"},
            {"os": "linux", "architecture": "arm", "variant": "v7"},
        ),
        where="test",
    )
    assert isinstance(index, ImageIndex)
    assert str(index.select(Platform("linux", "amd64")).digest) == D1
    # The host reports arm64/v8 while images usually omit the variant.
    assert str(index.select(Platform("linux", "arm64", "v8")).digest) == D2
    assert str(index.select(Platform("linux", "arm", "v7")).digest) == D3
    with pytest.raises(NoMatchingPlatformError, match=r"linux/s390x.*offered: linux/amd64"):
        index.select(Platform("linux", "s390x"))
    with pytest.raises(NoMatchingPlatformError):
        index.select(Platform("linux", "arm", "v6"))


def test_platform_parse_and_host() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    with pytest.raises(UnsupportedError):
        Platform.parse("linux")
    assert Platform.host().os == "linux"


def test_config_labels() -> None:
    raw = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Labels": {"containers.bootc": "1", "org.opencontainers.image.version": "2.1"},
                "Env": ["PATH=/usr/bin"],
            },
            "rootfs": {"type": "layers", "diff_ids": [D1]},
        }
    ).encode()
    cfg = parse_config(raw, where="test")
    assert cfg.bootable
    assert cfg.version == "2.1"
    assert cfg.diff_ids == (Digest.parse(D1),)
    assert cfg.env == ("PATH=/usr/bin",)


def test_verifier_catches_truncation_and_corruption() -> None:
    data = b"hello world"
    digest = Digest.of(data)
    ok = Verifier(digest, len(data), "blob")
    ok.update(data)
    ok.verify()
    short = Verifier(digest, len(data), "blob")
    short.update(data[:5])
    with pytest.raises(Exception, match="truncated: got 5 of 11 bytes"):
        short.verify()
    bad = Verifier(digest, len(data), "blob")
    bad.update(b"hello World")
    with pytest.raises(Exception, match="digest mismatch"):
        bad.verify()
    long = Verifier(digest, len(data), "blob")
    with pytest.raises(Exception, match="more data"):
        long.update(data + b"!")


def test_config_fields_have_the_types_containers_image_decodes() -> None:
    def config(**fields: Any) -> bytes:
        return json.dumps({"architecture": "amd64", "os": "linux", **fields}).encode()

    ok = parse_config(
        config(created="2026-01-01T00:00:00.123456789+02:00", config={"Labels": {"a": None}}),
        where="test",
    )
    assert ok.created == "2026-01-01T00:00:00.123456789+02:00" and ok.labels == {}
    assert parse_config(config(created=None), where="test").created is None
    for fields, message in [
        ({"created": "2026-01-01 00:00:00"}, "not an RFC 3339"),
        ({"created": "2026-02-30T00:00:00Z"}, "not an RFC 3339"),
        ({"created": 1}, "created must be a string"),
        ({"config": {"Labels": {"v": 1}}}, 'config.Labels["v"] must be a string'),
        ({"config": {"Labels": []}}, "config.Labels must be an object"),
        ({"config": {"Env": "A=1"}}, "config.Env must be an array"),
        ({"config": {"Cmd": [1]}}, "config.Cmd must hold strings only"),
        ({"config": []}, "config must be an object"),
        ({"rootfs": {"diff_ids": "x"}}, "rootfs.diff_ids must be an array"),
        ({"architecture": True}, "architecture must be a string"),
    ]:
        with pytest.raises(ManifestError, match=re.escape(message)):
            parse_config(config(**fields), where="test")
