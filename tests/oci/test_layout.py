"""oci:DIR[:REF] — atoll.oci.transports.layout."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.errors import (
    DigestMismatchError,
    InvalidInputError,
    InvalidReferenceError,
    ManifestError,
    NotFoundError,
)
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, MediaType
from atoll.oci.transports import CHUNK_SIZE, ImageName
from atoll.oci.transports.layout import (
    LayoutDestination,
    LayoutSource,
    delete_ref,
    list_ref_names,
    merge_entry,
)
from helpers.images import build_image, build_multiarch, list_files
from helpers.naive_copy import naive_copy
from helpers.skopeo import Skopeo

CTX = SystemContext()
REF = "org.opencontainers.image.ref.name"


def source(text: str) -> LayoutSource:
    return LayoutSource(ImageName.parse(text), CTX)


def destination(text: str) -> LayoutDestination:
    return LayoutDestination(ImageName.parse(text), CTX)


def read_blob(src: LayoutSource, desc: Descriptor) -> bytes:
    with src.open_blob(desc) as chunks:
        return b"".join(chunks)


def blob_desc(layout: Path, digest: str, media_type: str = MediaType.OCI_LAYER_GZIP) -> Descriptor:
    d = Digest.parse(digest)
    return Descriptor(media_type, d, (layout / "blobs" / "sha256" / d.hex).stat().st_size)


def snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in list_files(root)}


def no_temp_siblings(parent: Path) -> bool:
    return not [p for p in parent.rglob("*") if p.name.startswith(".atoll-tmp-")]


# --- reading ---------------------------------------------------------------------------


def test_source_serves_manifest_and_blobs_as_stored(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a", "v1", layer_size=3 * CHUNK_SIZE)
    with source(f"oci:{tmp_path / 'a'}:v1") as src:
        raw, media_type = src.get_manifest()
        assert raw == img.manifest
        assert media_type == MediaType.OCI_MANIFEST
        layer = blob_desc(img.layout, img.layer_digests[0])
        with src.open_blob(layer) as chunks:
            pieces = list(chunks)
        assert all(len(p) <= CHUNK_SIZE for p in pieces)
        assert len(pieces) > 1, "a large blob is streamed in several chunks"
        assert Digest.of(b"".join(pieces)) == layer.digest


def test_source_without_ref_takes_the_only_image(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a", "v1")
    raw, _ = source(f"oci:{tmp_path / 'a'}").get_manifest()
    assert raw == img.manifest


def test_source_without_ref_refuses_to_guess_among_several(tmp_path: Path) -> None:
    build_image(tmp_path / "a", "one")
    build_image(tmp_path / "a", "two", seed="two")
    with pytest.raises(InvalidReferenceError, match=r"2 images \(names: one, two\)"):
        source(f"oci:{tmp_path / 'a'}")


def test_source_missing_ref_lists_the_names(tmp_path: Path) -> None:
    build_image(tmp_path / "a", "one")
    with pytest.raises(NotFoundError, match=r"no image named 'nope' \(names: one\)"):
        source(f"oci:{tmp_path / 'a'}:nope")


def test_source_index_and_instances(tmp_path: Path) -> None:
    index_digest, images = build_multiarch(tmp_path / "m", "multi")
    src = source(f"oci:{tmp_path / 'm'}:multi")
    raw, media_type = src.get_manifest()
    assert media_type == MediaType.OCI_INDEX
    assert str(Digest.of(raw)) == index_digest
    arm = images["arm64"]
    assert src.get_manifest(Digest.parse(arm.manifest_digest)) == (arm.manifest, None)


def test_missing_directory_index_or_marker(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such directory"):
        source(f"oci:{tmp_path / 'absent'}")
    build_image(tmp_path / "a")
    (tmp_path / "a" / "index.json").unlink()
    with pytest.raises(NotFoundError, match=r"index not found: .*a/index\.json"):
        source(f"oci:{tmp_path / 'a'}")
    build_image(tmp_path / "b")
    (tmp_path / "b" / "oci-layout").unlink()
    with pytest.raises(NotFoundError, match=r"b/oci-layout"):
        source(f"oci:{tmp_path / 'b'}")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"schemaVersion": 2, "manifests": {}}',
        b'{"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "sha256:../../etc"'
        b', "size": 1}]}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        b' "config": {}, "layers": []}',
        # Nesting past the recursion limit, and a duplicated key: refused, not a crash
        # nor a guess at which "manifests" was meant.
        b'{"schemaVersion": 2, "manifests": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"schemaVersion": 2, "manifests": [], "manifests": []}',
    ],
)
def test_malformed_index_json_is_a_manifest_error(tmp_path: Path, content: bytes) -> None:
    build_image(tmp_path / "a")
    (tmp_path / "a" / "index.json").write_bytes(content)
    with pytest.raises(ManifestError, match=r"a/index\.json"):
        source(f"oci:{tmp_path / 'a'}")


def test_malformed_oci_layout_is_a_manifest_error(tmp_path: Path) -> None:
    build_image(tmp_path / "a")
    (tmp_path / "a" / "oci-layout").write_text("{}")
    with pytest.raises(ManifestError, match=r"a/oci-layout: no imageLayoutVersion"):
        source(f"oci:{tmp_path / 'a'}")


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    layer = blob_desc(img.layout, img.layer_digests[0])
    (img.layout / "blobs" / "sha256" / layer.digest.hex).unlink()
    with (
        pytest.raises(NotFoundError, match=f"blob {layer.digest} not found"),
        source(f"oci:{img.layout}").open_blob(layer) as chunks,
    ):
        list(chunks)


def test_blob_paths_come_only_from_valid_digests(tmp_path: Path) -> None:
    # A digest names a file on disk; one that could escape the layout cannot exist.
    with pytest.raises(InvalidReferenceError, match="invalid digest"):
        Digest("sha256", "../../../secret")
    with pytest.raises(InvalidReferenceError, match="invalid digest"):
        Digest("sha256", "A" * 64)


# --- writing ---------------------------------------------------------------------------


def test_round_trip_keeps_every_byte(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a", "v1")
    with source(f"oci:{img.layout}:v1") as src, destination(f"oci:{tmp_path / 'b'}:v2") as dest:
        naive_copy(src, dest)
    out = tmp_path / "b"
    assert (out / "oci-layout").read_bytes() == b'{"imageLayoutVersion": "1.0.0"}'
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"] == [
        {
            "mediaType": MediaType.OCI_MANIFEST,
            "digest": img.manifest_digest,
            "size": len(img.manifest),
            "annotations": {REF: "v2"},
        }
    ]
    assert snapshot(out / "blobs") == snapshot(img.layout / "blobs")
    back = source(f"oci:{out}:v2")
    assert back.get_manifest() == (img.manifest, MediaType.OCI_MANIFEST)
    assert no_temp_siblings(tmp_path)


def test_round_trip_of_an_index_with_all_instances(tmp_path: Path) -> None:
    index_digest, _ = build_multiarch(tmp_path / "m", "multi")
    with source(f"oci:{tmp_path / 'm'}:multi") as src, destination(f"oci:{tmp_path / 'c'}") as d:
        naive_copy(src, d)
    assert snapshot(tmp_path / "c" / "blobs") == snapshot(tmp_path / "m" / "blobs")
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [index_digest]
    assert "annotations" not in index["manifests"][0]


def test_writing_into_an_existing_layout_replaces_the_same_name(tmp_path: Path) -> None:
    a = build_image(tmp_path / "src", "a")
    b = build_image(tmp_path / "src", "b", seed="b")
    layout = tmp_path / "out"
    build_image(layout, "keep", seed="keep")
    build_image(layout, "a", seed="old-a")
    for ref in ("a", "b"):
        with source(f"oci:{tmp_path / 'src'}:{ref}") as s, destination(f"oci:{layout}:a") as d:
            naive_copy(s, d)
    assert list_ref_names(layout) == ["keep", "a"]
    assert source(f"oci:{layout}:a").get_manifest()[0] == b.manifest
    assert a.manifest_digest not in (layout / "index.json").read_text()


def test_merge_entry_follows_skopeo() -> None:
    # Observed with skopeo 1.9.3: see the layout module docstring.
    def e(digest: str, name: str | None = None) -> dict[str, object]:
        out: dict[str, object] = {"digest": digest}
        if name:
            out["annotations"] = {REF: name}
        return out

    entries = [e("sha256:1", "tag")]
    entries = merge_entry(entries, e("sha256:2"))  # no ref: appended
    assert entries == [e("sha256:1", "tag"), e("sha256:2")]
    entries = merge_entry(entries, e("sha256:2"))  # same digest, nameless: replaced
    assert entries == [e("sha256:1", "tag"), e("sha256:2")]
    entries = merge_entry(entries, e("sha256:1"))  # named entry with same digest stays
    assert entries == [e("sha256:1", "tag"), e("sha256:2"), e("sha256:1")]
    entries = merge_entry(entries, e("sha256:1", "new"))  # takes the nameless one's place
    assert entries == [e("sha256:1", "tag"), e("sha256:2"), e("sha256:1", "new")]
    entries = merge_entry(entries, e("sha256:3", "tag"))  # same name: old one removed
    assert entries == [e("sha256:2"), e("sha256:1", "new"), e("sha256:3", "tag")]


def test_existing_empty_directory_is_fine(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with source(f"oci:{img.layout}") as src, destination(f"oci:{tmp_path / 'empty'}:x") as d:
        naive_copy(src, d)
    assert list_ref_names(tmp_path / "empty") == ["x"]


def test_existing_layout_without_index_gets_one(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    with source(f"oci:{img.layout}") as src, destination(f"oci:{tmp_path / 'l'}:x") as d:
        naive_copy(src, d)
    assert list_ref_names(tmp_path / "l") == ["x"]


def test_existing_directory_that_is_not_a_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="is not an OCI image layout"):
        destination(f"oci:{tmp_path / 'junk'}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is not a directory"):
        destination(f"oci:{tmp_path / 'file'}")


def test_abort_of_a_new_layout_leaves_no_directory(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    dest = destination(f"oci:{tmp_path / 'new'}:x")
    naive_copy(source(f"oci:{img.layout}"), dest, commit=False)
    dest.abort()
    assert not (tmp_path / "new").exists()
    assert no_temp_siblings(tmp_path)


def test_failed_copy_into_existing_layout_changes_nothing(tmp_path: Path) -> None:
    build_image(tmp_path / "out", "keep", seed="keep")
    before = snapshot(tmp_path / "out")
    img = build_image(tmp_path / "a", seed="new")
    with pytest.raises(RuntimeError, match="boom"), destination(f"oci:{tmp_path / 'out'}:x") as d:
        naive_copy(source(f"oci:{img.layout}"), d, commit=False)
        raise RuntimeError("boom")
    assert snapshot(tmp_path / "out") == before


def test_close_without_commit_undoes_the_copy(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    with destination(f"oci:{tmp_path / 'new'}") as dest:
        naive_copy(source(f"oci:{img.layout}"), dest, commit=False)
    assert not (tmp_path / "new").exists()


def _chunked(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]


@pytest.mark.parametrize("damage", ["wrong", "truncated", "longer"])
def test_bad_blob_is_rejected_and_nothing_is_renamed(tmp_path: Path, damage: str) -> None:
    build_image(tmp_path / "out", "keep", seed="keep")
    before = snapshot(tmp_path / "out")
    data = b"x" * 5000
    desc = Descriptor(MediaType.OCI_LAYER, Digest.of(data), len(data))
    bad = {"wrong": b"y" * 5000, "truncated": data[:4000], "longer": data + b"!"}[damage]
    dest = destination(f"oci:{tmp_path / 'out'}:x")
    with pytest.raises(DigestMismatchError, match=str(desc.digest)):
        dest.put_blob(desc, _chunked(bad))
    assert not dest.has_blob(desc)
    assert snapshot(tmp_path / "out") == before, "no blob and no temporary file is left"


def test_put_blob_is_thread_safe_also_for_the_same_digest(tmp_path: Path) -> None:
    dest = destination(f"oci:{tmp_path / 'out'}")
    blobs = [bytes([i]) * (10_000 + i) for i in range(16)]
    descs = [Descriptor(MediaType.OCI_LAYER, Digest.of(b), len(b)) for b in blobs]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(len(blobs)):
                k = (i + offset) % len(blobs)
                dest.put_blob(descs[k], _chunked(blobs[k]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(dest.has_blob(d) for d in descs)
    dest.abort()


def test_commit_before_manifest_is_a_bug(tmp_path: Path) -> None:
    dest = destination(f"oci:{tmp_path / 'out'}")
    with pytest.raises(Exception, match="commit before the manifest"):
        dest.commit()
    dest.abort()


# --- listing and deleting -------------------------------------------------------------


def test_delete_ref_removes_entry_and_unshared_blobs(tmp_path: Path) -> None:
    layout = tmp_path / "l"
    one = build_image(layout, "one", seed="one")
    two = build_image(layout, "two", seed="two")
    # "three" is "one" under another name: deleting "one" must keep all its blobs.
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({**index["manifests"][0], "annotations": {REF: "three"}})
    (layout / "index.json").write_text(json.dumps(index))
    assert list_ref_names(layout) == ["one", "two", "three"]

    gone = delete_ref(layout, "one")
    assert str(gone) == one.manifest_digest
    assert gone.removed_blobs == ()
    assert list_ref_names(layout) == ["two", "three"]

    gone = delete_ref(layout, "three")
    expected = {one.manifest_digest, one.config_digest, *one.layer_digests}
    assert {str(d) for d in gone.removed_blobs} == expected
    assert list_ref_names(layout) == ["two"]
    remaining = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert remaining == {two.manifest_digest, two.config_digest, *two.layer_digests}
    assert source(f"oci:{layout}:two").get_manifest()[0] == two.manifest

    with pytest.raises(NotFoundError, match=r"no image named 'one' \(names: two\)"):
        delete_ref(layout, "one")


def test_delete_ref_of_an_index_removes_its_instances(tmp_path: Path) -> None:
    layout = tmp_path / "l"
    build_multiarch(layout, "multi")
    keep = build_image(layout, "keep", seed="keep")
    delete_ref(layout, "multi")
    remaining = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert remaining == {keep.manifest_digest, keep.config_digest, *keep.layer_digests}


def test_delete_ref_refuses_when_a_manifest_is_malformed(tmp_path: Path) -> None:
    layout = tmp_path / "l"
    build_image(layout, "one", seed="one")
    two = build_image(layout, "two", seed="two")
    (layout / "blobs" / "sha256" / two.manifest_digest.split(":")[1]).write_text("garbage")
    before = snapshot(layout)
    with pytest.raises(ManifestError):
        delete_ref(layout, "one")
    assert snapshot(layout) == before


# --- skopeo interoperability -----------------------------------------------------------


@pytest.mark.integration
def test_skopeo_copy_is_read_by_atoll(tmp_path: Path) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    img = build_image(tmp_path / "a", "tag")
    skopeo.copy(f"oci:{tmp_path / 'a'}:tag", f"oci:{tmp_path / 'b'}:tag")
    skopeo.copy(f"oci:{tmp_path / 'a'}:tag", f"oci:{tmp_path / 'c'}")
    for name in (f"oci:{tmp_path / 'b'}:tag", f"oci:{tmp_path / 'c'}"):
        src = source(name)
        assert src.get_manifest() == (img.manifest, MediaType.OCI_MANIFEST)
        layer = blob_desc(img.layout, img.layer_digests[1])
        assert (
            read_blob(src, layer) == (img.layout / "blobs/sha256" / layer.digest.hex).read_bytes()
        )


@pytest.mark.integration
def test_atoll_layout_is_read_by_skopeo(tmp_path: Path) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    index_digest, _ = build_multiarch(tmp_path / "m", "multi")
    img = build_image(tmp_path / "a", "tag")
    with source(f"oci:{img.layout}:tag") as s, destination(f"oci:{tmp_path / 'out'}:one") as d:
        naive_copy(s, d)
    with source(f"oci:{tmp_path / 'm'}") as s, destination(f"oci:{tmp_path / 'out'}:multi") as d:
        naive_copy(s, d)
    assert skopeo.raw_manifest(f"oci:{tmp_path / 'out'}:one") == img.manifest
    assert skopeo.inspect(f"oci:{tmp_path / 'out'}:one")["Digest"] == img.manifest_digest
    skopeo.copy(f"oci:{tmp_path / 'out'}:one", f"oci:{tmp_path / 'again'}:x")
    assert source(f"oci:{tmp_path / 'again'}:x").get_manifest()[0] == img.manifest
    skopeo.copy(f"oci:{tmp_path / 'out'}:multi", f"oci:{tmp_path / 'again'}:m", all_images=True)
    raw = skopeo.raw_manifest(f"oci:{tmp_path / 'again'}:m")
    assert str(Digest.of(raw)) == index_digest
    # After deleting one name skopeo still reads the other, blobs intact.
    delete_ref(tmp_path / "out", "one")
    skopeo.copy(f"oci:{tmp_path / 'out'}:multi", f"oci:{tmp_path / 'third'}:m", all_images=True)
    assert str(Digest.of(skopeo.raw_manifest(f"oci:{tmp_path / 'third'}:m"))) == index_digest
