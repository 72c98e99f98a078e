"""``atoll rechunk`` on a real Debian tree: the same files, in stable reproducible layers.

The source images are the cached debootstrap tree as one layer (helpers.debian)
plus, for later versions, a layer that adds a package (its files, its dpkg
info list and a new status stanza) or changes the files of two packages.  The
results are read back with Python's tarfile, not with atoll's code, and
compared with the source entry by entry; skopeo and podman 4.3 pull the
result from the real registry, and podman runs it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from atoll.build.grouping import GROUP_ANNOTATION, LAYOUT_LABEL
from atoll.build.rechunk import RechunkOptions, RechunkResult, rechunk_image
from atoll.errors import RechunkError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.podman import isolated_environment
from helpers.cli import run_atoll
from helpers.debian import DebianTree, build_debian_image
from helpers.osimage import FileSpec
from helpers.parts import require_tool
from helpers.registry import RegistryView

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCH = 1_767_225_600  # 2026-01-01, the test images' creation time
NEW_PACKAGE = "atoll-test-extra"
MAX_LAYERS = 48


@dataclass(frozen=True)
class Item:
    kind: bytes
    mode: int
    uid: int
    gid: int
    size: int
    sha: str
    linkname: str
    mtime: int


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _manifest(layout: Path, ref: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == ref
    )
    data: dict[str, Any] = json.loads(_blob(layout, desc["digest"]))
    data["_digest"] = desc["digest"]
    return data


def _plain(data: bytes, media_type: str) -> bytes:
    if media_type.endswith("+gzip"):
        return gzip.decompress(data)
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _items(tar_bytes: bytes) -> dict[str, Item]:
    out: dict[str, Item] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar:
            name = m.name.strip("/").removeprefix("./")
            if not name or name == ".":
                continue
            assert ".wh." not in name, name
            if m.islnk():
                target = out[m.linkname.strip("/")]
                out[name] = Item(b"0", m.mode, m.uid, m.gid, target.size, target.sha, "", m.mtime)
                continue
            data = tar.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            kind = tarfile.REGTYPE if m.type == tarfile.AREGTYPE else m.type
            sha = hashlib.sha256(data).hexdigest() if m.isreg() else ""
            out[name] = Item(kind, m.mode, m.uid, m.gid, m.size, sha, m.linkname, m.mtime)
    return out


def _read(layout: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Item]]]:
    manifest = _manifest(layout, ref)
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    layers = []
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        plain = _plain(_blob(layout, desc["digest"]), desc["mediaType"])
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
        layers.append(_items(plain))
    return manifest, config, layers


def _merged(layers: list[dict[str, Item]]) -> dict[str, Item]:
    out: dict[str, Item] = {}
    for layer in layers:
        out.update(layer)
    return out


@pytest.fixture(scope="module")
def images(debian_tree: DebianTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """oci:LAYOUT with v1 (the tree), v2 (+ a package), v3 (two packages changed)."""
    layout = tmp_path_factory.mktemp("rechunk-src")
    build_debian_image(layout, "v1", debian_tree, version="1")
    status = (debian_tree.rootfs / "var/lib/dpkg/status").read_text()
    stanza = (
        f"Package: {NEW_PACKAGE}\nStatus: install ok installed\nPriority: optional\n"
        "Architecture: all\nVersion: 1.0\nDescription: a package added by the test\n"
    )
    files = {f"usr/share/{NEW_PACKAGE}/data-{i}": os.urandom(3000) for i in range(5)}
    listing = "".join(f"/{p}\n" for p in ["usr/share", f"usr/share/{NEW_PACKAGE}", *files])
    added: dict[str, Any] = {
        **files,
        f"var/lib/dpkg/info/{NEW_PACKAGE}.list": listing,
        "var/lib/dpkg/status": status.rstrip("\n") + "\n\n" + stanza,
    }
    build_debian_image(layout, "v2", debian_tree, version="2", add=added)
    changed = {
        "usr/bin/grep": FileSpec(b"#!/bin/sh\necho changed grep\n", mode=0o755),
        "usr/bin/hostname": FileSpec(b"#!/bin/sh\necho changed hostname\n", mode=0o755),
    }
    build_debian_image(layout, "v3", debian_tree, version="3", add=changed)
    return layout


def _rechunk(images: Path, ref: str, out: Path, **options: Any) -> RechunkResult:
    ctx = SystemContext(tmpdir=out.parent)
    opts = RechunkOptions(max_layers=MAX_LAYERS, **options)
    return rechunk_image(
        ImageName.parse(f"oci:{images}:{ref}"), ImageName.parse(f"oci:{out}:{ref}"), ctx, opts
    )


@pytest.fixture(scope="module")
def v1(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RechunkResult]:
    out = tmp_path_factory.mktemp("rechunk-v1") / "layout"
    return out, _rechunk(images, "v1", out)


def _groups(layout: Path, ref: str) -> dict[str, str]:
    manifest = _manifest(layout, ref)
    return {d["annotations"][GROUP_ANNOTATION]: d["digest"] for d in manifest["layers"]}


def test_every_file_is_there_once_with_its_content_and_metadata(
    images: Path, v1: tuple[Path, RechunkResult]
) -> None:
    out, result = v1
    _, _, source_layers = _read(images, "v1")
    manifest, config, layers = _read(out, "v1")
    assert result.package_format == "dpkg" and result.packages > 50
    assert 8 < len(layers) <= MAX_LAYERS
    assert manifest["_digest"] == result.digest
    # History and labels stay right: one history entry per layer, the source's labels kept.
    assert len(config["history"]) == len(layers)
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == "1"
    assert json.loads(config["config"]["Labels"][LAYOUT_LABEL])["max_layers"] == MAX_LAYERS
    sizes = [d["size"] for d in manifest["layers"]]
    assert max(sizes) <= 0.25 * sum(sizes), "one layer holds more than a quarter of the image"

    seen: dict[str, Item] = {}
    for layer in layers:
        for path, item in layer.items():
            if item.kind == tarfile.DIRTYPE:
                assert seen.get(path, item) == item, f"{path}: directories differ between layers"
            else:
                assert path not in seen, f"{path} is in two layers"
            seen[path] = item
    source = _merged(source_layers)
    assert sorted(seen) == sorted(source)
    for path, before in source.items():
        after = seen[path]
        want = before.mtime if before.kind != tarfile.DIRTYPE else 0
        assert after.mtime == min(want, EPOCH), path
        strip = {"mtime": 0}
        assert after.__class__(**{**after.__dict__, **strip}) == before.__class__(
            **{**before.__dict__, **strip}
        ), path


def test_the_same_image_gives_the_same_digest_through_the_command_line(
    images: Path, v1: tuple[Path, RechunkResult], tmp_path: Path
) -> None:
    _, result = v1
    proc = run_atoll(
        "--json",
        "rechunk",
        f"oci:{images}:v1",
        f"oci:{tmp_path}/again:v1",
        *("--max-layers", str(MAX_LAYERS), "--tmpdir", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digest"] == result.digest


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {g for g in set(a) | set(b) if a.get(g) != b.get(g)}


def test_a_new_package_changes_only_its_group_and_the_package_state(
    images: Path, v1: tuple[Path, RechunkResult], tmp_path: Path
) -> None:
    out1, _ = v1
    out2 = tmp_path / "v2"
    result = _rechunk(images, "v2", out2, previous=ImageName.parse(f"oci:{out1}:v1"))
    before, after = _groups(out1, "v1"), _groups(out2, "v2")
    home = next(
        layer.group
        for layer in result.layers
        if layer.group in after
        and layer.group.startswith(("pkgs/", "pkg/"))
        and _has(out2, "v2", layer.group, f"usr/share/{NEW_PACKAGE}/data-0")
    )
    assert _changed(before, after) == {home, "state"}


def _has(layout: Path, ref: str, group: str, path: str) -> bool:
    manifest = _manifest(layout, ref)
    desc = next(d for d in manifest["layers"] if d["annotations"][GROUP_ANNOTATION] == group)
    return path in _items(_plain(_blob(layout, desc["digest"]), desc["mediaType"]))


def test_changed_files_of_two_packages_change_only_their_groups(
    images: Path, v1: tuple[Path, RechunkResult], tmp_path: Path
) -> None:
    out1, _ = v1
    out3 = tmp_path / "v3"
    _rechunk(images, "v3", out3, previous=ImageName.parse(f"oci:{out1}:v1"))
    before, after = _groups(out1, "v1"), _groups(out3, "v3")
    owners = {
        g
        for g in after
        if _has(out3, "v3", g, "usr/bin/grep") or _has(out3, "v3", g, "usr/bin/hostname")
    }
    assert _changed(before, after) == owners
    assert 1 <= len(owners) <= 2


def test_previous_must_carry_a_layout(images: Path, tmp_path: Path) -> None:
    with pytest.raises(RechunkError, match="no label"):
        _rechunk(images, "v1", tmp_path / "x", previous=ImageName.parse(f"oci:{images}:v1"))


@pytest.mark.timeout(1200)  # podman 4.3 here stores with vfs: a full copy of the tree per layer
def test_skopeo_and_podman_pull_and_run_the_result(
    images: Path,
    v1: tuple[Path, RechunkResult],
    registry: RegistryView,
    tmp_path: Path,
) -> None:
    podman = require_tool("podman")
    ref = f"{registry.host}/{registry.new_repo('rechunk')}"
    ctx = registry.ctx(tmpdir=tmp_path)
    out1, first = v1
    registry.skopeo(
        "copy", "--quiet", *registry.skopeo_args("dest"), f"oci:{out1}:v1", f"docker://{ref}:v1"
    )
    # v3 straight to the registry, with --previous read from it: only changed groups are sent.
    third = rechunk_image(
        ImageName.parse(f"oci:{images}:v3"),
        ImageName.parse(f"docker://{ref}:v3"),
        ctx,
        RechunkOptions(max_layers=MAX_LAYERS, previous=ImageName.parse(f"docker://{ref}:v1")),
    )
    sent = [layer.group for layer in third.layers if not layer.present]
    assert 1 <= len(sent) <= 2, sent

    inspected = json.loads(
        registry.skopeo("inspect", *registry.skopeo_args(), f"docker://{ref}:v1").stdout
    )
    assert inspected["Digest"] == first.digest
    assert len(inspected["Layers"]) == len(first.layers)
    registry.skopeo(
        "copy",
        "--quiet",
        *registry.skopeo_args("src"),
        f"docker://{ref}:v1",
        f"oci:{tmp_path}/sk:v1",
    )

    conf = Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    env = {**os.environ, **isolated_environment(tmp_path / "podman", registries_conf=conf)}

    def run(*args: str) -> str:
        proc = subprocess.run(
            [podman, *args], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    run("pull", "--quiet", f"{ref}:v1")
    assert run("image", "inspect", "--format", "{{.Digest}}", f"{ref}:v1") == first.digest
    shown = run(
        "run",
        "--rm",
        "--network=none",
        f"{ref}:v1",
        "/bin/sh",
        "-c",
        "cat /etc/debian_version; ls -l /usr/bin/grep",
    )
    assert shown.splitlines()[0][0].isdigit()
    run("pull", "--quiet", f"{ref}:v3")
    assert "changed grep" in run("run", "--rm", "--network=none", f"{ref}:v3", "/usr/bin/grep")
