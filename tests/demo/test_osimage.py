"""The demo's blueprints and base image, checked with atoll's own readers."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from atoll.build.blueprint import parse_blueprint
from atoll.demo import osimage


def test_the_blueprints_parse_and_tell_the_story() -> None:
    parsed = {
        v.version: parse_blueprint(v.blueprint, f"edge-os-{v.version}.toml")
        for v in osimage.versions()
    }
    assert list(parsed) == ["1.0", "2.0", "3.0"]
    assert [b.version for b in parsed.values()] == ["1.0", "2.0", "3.0"]
    assert [p.name for p in parsed["1.0"].packages] == []
    assert [p.name for p in parsed["2.0"].packages] == ["strace"]

    def files(version: str) -> dict[str, tuple[str, int]]:
        custom = parsed[version].customizations
        assert custom is not None
        return {f.path: (f.data, f.mode) for f in custom.files}

    check = f"/usr/lib/greenboot/check/required.d/{osimage.CHECK}"
    assert check not in files("1.0")
    assert files("2.0")[check] == (osimage.WEB_CONFIG_CHECK, 0o755)
    assert files("2.0")["/usr/lib/edge/web.conf"][0] == "listen=8080\n"
    assert files("3.0")["/usr/lib/edge/web.conf"][0] == "port=8080\n"


def test_the_base_image_is_the_tree_and_the_apt_source(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_text("#!/bin/sh\n")
    (tree / "proc/1").mkdir(parents=True)  # emptied in the layer
    (tree / "etc/apt/sources.list.d").mkdir(parents=True)
    (tree / "etc/apt/sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    (tree / "etc/apt/sources.list.d/debian.sources").write_text("Types: deb\n")
    layout = tmp_path / "images"
    digest = osimage.write_base(layout, tree, tmp_path / "cache", "deb [trusted=yes] http://x/ ./")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "base"
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / digest.removeprefix("sha256:")).read_bytes())
    names = []
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].removeprefix("sha256:")) as tar:
            names.append(sorted(tar.getnames()))
    assert "usr/bin/tool" in names[0] and "proc" in names[0]
    # The apt source is the image's only one: sources.list replaced, the tree's
    # other source files removed (whiteouts).
    assert names[1] == [
        "etc",
        "etc/apt",
        "etc/apt/sources.list",
        "etc/apt/sources.list.d",
        "etc/apt/sources.list.d/.wh.debian.sources",
    ]
    with tarfile.open(blobs / manifest["layers"][1]["digest"].removeprefix("sha256:")) as tar:
        sources = tar.extractfile("etc/apt/sources.list")
        assert sources is not None
        assert sources.read() == b"deb [trusted=yes] http://x/ ./\n"
    # The base layer is packed once and kept in the cache.
    assert len(list((tmp_path / "cache").glob("base-layer-*.tar.gz"))) == 1
