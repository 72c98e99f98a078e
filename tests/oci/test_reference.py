from __future__ import annotations

import pytest

from atoll.errors import InvalidReferenceError
from atoll.oci.digest import Digest
from atoll.oci.reference import ImageReference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("quay.io/fedora/fedora-bootc:41", "quay.io/fedora/fedora-bootc:41"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
        (f"localhost:5000/a/b@{D}", f"localhost:5000/a/b@{D}"),
        (f"registry.example.com/os:v2@{D}", f"registry.example.com/os:v2@{D}"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest"),
        ("[::1]:5000/x", "[::1]:5000/x:latest"),
        ("a.b/c__d/e-f.g", "a.b/c__d/e-f.g:latest"),
    ],
)
def test_normalises_like_containers_image(text: str, expected: str) -> None:
    assert str(ImageReference.parse(text)) == expected


def test_fields() -> None:
    ref = ImageReference.parse(f"localhost:5000/a/b:v1@{D}")
    assert ref.registry == "localhost:5000"
    assert ref.repository == "a/b"
    assert ref.tag == "v1"
    assert ref.digest == Digest.parse(D)
    # The digest wins when asking the registry.
    assert ref.manifest_ref == D
    assert ref.with_tag("v2").manifest_ref == "v2"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("quay.io/Org/app", "lowercase"),
        ("busybox:", "bad tag"),
        ("busybox:.x", "bad tag"),
        ("busybox@sha256:abc", "64"),
        ("busybox@md5:" + "a" * 32, "unsupported algorithm"),
        ("a//b", "bad path component"),
        ("host:5000/", "no repository"),
        ("-bad.host:5000/x", "bad registry host"),
        (" busybox", "spaces"),
        ("x/" + "a" * 260, "longer than"),
    ],
)
def test_rejects_malformed(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError, match=reason) as info:
        ImageReference.parse(text)
    assert info.value.exit_code == 3
    assert "\n" not in str(info.value)
