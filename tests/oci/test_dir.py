"""dir:DIR — atoll.oci.transports.dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import DigestMismatchError, InvalidInputError, NotFoundError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, MediaType
from atoll.oci.transports import ImageName
from atoll.oci.transports.dir import VERSION, DirDestination, DirSource
from atoll.oci.transports.layout import LayoutSource
from helpers.images import build_image, build_multiarch, list_files
from helpers.naive_copy import naive_copy
from helpers.skopeo import Skopeo

CTX = SystemContext()


def source(text: str) -> DirSource:
    return DirSource(ImageName.parse(text), CTX)


def destination(text: str) -> DirDestination:
    return DirDestination(ImageName.parse(text), CTX)


def layout_source(text: str) -> LayoutSource:
    return LayoutSource(ImageName.parse(text), CTX)


def hexes(*digests: str) -> list[str]:
    return [d.split(":")[1] for d in digests]


def snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in list_files(root)}


def test_version_string_is_skopeos() -> None:
    assert VERSION == "Directory Transport Version: 1.1\n"


def test_round_trip_writes_skopeos_file_names(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a", "v1")
    out = tmp_path / "d"
    with layout_source(f"oci:{img.layout}") as s, destination(f"dir:{out}") as d:
        naive_copy(s, d)
    expected = sorted(["manifest.json", "version", *hexes(img.config_digest, *img.layer_digests)])
    assert list_files(out) == expected
    assert (out / "version").read_text() == VERSION
    assert (out / "manifest.json").read_bytes() == img.manifest
    for h in hexes(img.config_digest, *img.layer_digests):
        assert (out / h).read_bytes() == (img.layout / "blobs" / "sha256" / h).read_bytes()
    with source(f"dir:{out}") as back:
        assert back.get_manifest() == (img.manifest, None)
        assert back.get_manifest(Digest.parse(img.manifest_digest)) == (img.manifest, None)
        layer = Descriptor(MediaType.OCI_LAYER_GZIP, Digest.parse(img.layer_digests[0]), -1)
        with back.open_blob(layer) as chunks:
            assert b"".join(chunks) == (out / hexes(img.layer_digests[0])[0]).read_bytes()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".atoll-tmp")] == []


def test_index_instances_are_hex_manifest_json_files(tmp_path: Path) -> None:
    index_digest, images = build_multiarch(tmp_path / "m", "multi")
    out = tmp_path / "d"
    with layout_source(f"oci:{tmp_path / 'm'}") as s, destination(f"dir:{out}") as d:
        naive_copy(s, d)
    assert str(Digest.of((out / "manifest.json").read_bytes())) == index_digest
    for img in images.values():
        h = hexes(img.manifest_digest)[0]
        assert (out / f"{h}.manifest.json").read_bytes() == img.manifest
    back = source(f"dir:{out}")
    arm = images["arm64"]
    assert back.get_manifest(Digest.parse(arm.manifest_digest)) == (arm.manifest, None)


def test_existing_dir_image_is_replaced_whole(tmp_path: Path) -> None:
    first = build_image(tmp_path / "a", seed="first")
    second = build_image(tmp_path / "b", seed="second")
    out = tmp_path / "d"
    for img in (first, second):
        with layout_source(f"oci:{img.layout}") as s, destination(f"dir:{out}") as d:
            naive_copy(s, d)
    assert (out / "manifest.json").read_bytes() == second.manifest
    assert not (out / hexes(first.config_digest)[0]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "d", "home"]


def test_existing_directory_with_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(InvalidInputError, match="refusing to overwrite"):
        destination(f"dir:{tmp_path / 'mine'}")
    (tmp_path / "mine" / "version").write_text("Directory Transport Version: 9.9\n")
    with pytest.raises(InvalidInputError, match="refusing to overwrite"):
        destination(f"dir:{tmp_path / 'mine'}")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_existing_empty_directory_is_fine(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    (tmp_path / "d").mkdir()
    with layout_source(f"oci:{img.layout}") as s, destination(f"dir:{tmp_path / 'd'}") as d:
        naive_copy(s, d)
    assert (tmp_path / "d" / "manifest.json").read_bytes() == img.manifest


def test_abort_leaves_the_previous_image_or_nothing(tmp_path: Path) -> None:
    first = build_image(tmp_path / "a", seed="first")
    second = build_image(tmp_path / "b", seed="second")
    out = tmp_path / "d"
    dest = destination(f"dir:{tmp_path / 'new'}")
    naive_copy(layout_source(f"oci:{first.layout}"), dest, commit=False)
    dest.abort()
    assert not (tmp_path / "new").exists()

    with layout_source(f"oci:{first.layout}") as s, destination(f"dir:{out}") as d:
        naive_copy(s, d)
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="interrupted"), destination(f"dir:{out}") as d:
        naive_copy(layout_source(f"oci:{second.layout}"), d, commit=False)
        raise RuntimeError("interrupted")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "d", "home"]


@pytest.mark.parametrize("bad", [b"z" * 100, b"a" * 99])
def test_bad_blob_is_rejected_and_nothing_is_renamed(tmp_path: Path, bad: bytes) -> None:
    data = b"a" * 100
    desc = Descriptor(MediaType.OCI_LAYER, Digest.of(data), len(data))
    dest = destination(f"dir:{tmp_path / 'd'}")
    with pytest.raises(DigestMismatchError, match=str(desc.digest)):
        dest.put_blob(desc, [bad[:50], bad[50:]])
    assert not dest.has_blob(desc)
    stage = next(p for p in tmp_path.iterdir() if p.name.startswith(".atoll-tmp"))
    assert list_files(stage) == ["version"]
    dest.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["home"]


def test_missing_directory_or_manifest(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such directory"):
        source(f"dir:{tmp_path / 'absent'}")
    (tmp_path / "d").mkdir()
    with pytest.raises(NotFoundError, match=r"no manifest\.json"):
        source(f"dir:{tmp_path / 'd'}")


# --- skopeo interoperability -----------------------------------------------------------


@pytest.mark.integration
def test_skopeo_dir_is_read_by_atoll(tmp_path: Path) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    img = build_image(tmp_path / "a", "tag")
    skopeo.copy(f"oci:{img.layout}:tag", f"dir:{tmp_path / 'd'}")
    with source(f"dir:{tmp_path / 'd'}") as src:
        assert src.get_manifest()[0] == img.manifest
        for digest in (img.config_digest, *img.layer_digests):
            with src.open_blob(Descriptor(MediaType.OCI_LAYER, Digest.parse(digest), -1)) as c:
                assert Digest.of(b"".join(c)) == Digest.parse(digest)
    index_digest, images = build_multiarch(tmp_path / "m", "multi")
    skopeo.copy(f"oci:{tmp_path / 'm'}:multi", f"dir:{tmp_path / 'md'}", all_images=True)
    src = source(f"dir:{tmp_path / 'md'}")
    raw, _ = src.get_manifest()
    assert str(Digest.of(raw)) == index_digest
    amd = images["amd64"]
    assert src.get_manifest(Digest.parse(amd.manifest_digest))[0] == amd.manifest


@pytest.mark.integration
def test_atoll_dir_is_read_by_skopeo(tmp_path: Path) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    img = build_image(tmp_path / "a", "tag")
    with layout_source(f"oci:{img.layout}") as s, destination(f"dir:{tmp_path / 'd'}") as d:
        naive_copy(s, d)
    assert skopeo.raw_manifest(f"dir:{tmp_path / 'd'}") == img.manifest
    skopeo.copy(f"dir:{tmp_path / 'd'}", f"oci:{tmp_path / 'b'}:tag")
    assert skopeo.inspect(f"oci:{tmp_path / 'b'}:tag")["Digest"] == img.manifest_digest
    # skopeo overwrites a dir: atoll wrote, as it would its own.
    other = build_image(tmp_path / "o", "tag", seed="other")
    skopeo.copy(f"oci:{other.layout}:tag", f"dir:{tmp_path / 'd'}")
    assert source(f"dir:{tmp_path / 'd'}").get_manifest()[0] == other.manifest
    index_digest, _ = build_multiarch(tmp_path / "m", "multi")
    with layout_source(f"oci:{tmp_path / 'm'}") as s, destination(f"dir:{tmp_path / 'md'}") as d:
        naive_copy(s, d)
    skopeo.copy(f"dir:{tmp_path / 'md'}", f"oci:{tmp_path / 'c'}:m", all_images=True)
    assert str(Digest.of(skopeo.raw_manifest(f"oci:{tmp_path / 'c'}:m"))) == index_digest
