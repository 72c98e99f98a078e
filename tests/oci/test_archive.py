"""oci-archive:FILE[:REF] — atoll.oci.transports.archive."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from atoll.errors import DigestMismatchError, InvalidInputError, LayerError, NotFoundError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, MediaType
from atoll.oci.transports import ImageName, ImageSource
from atoll.oci.transports.archive import (
    ArchiveDestination,
    ArchiveSource,
    TarLayout,
    list_archive_ref_names,
)
from atoll.oci.transports.layout import LayoutSource
from helpers.images import build_image, build_multiarch, list_files
from helpers.naive_copy import naive_copy
from helpers.skopeo import Skopeo

CTX = SystemContext()


def source(text: str) -> ArchiveSource:
    return ArchiveSource(ImageName.parse(text), CTX)


def destination(text: str, ctx: SystemContext = CTX) -> ArchiveDestination:
    return ArchiveDestination(ImageName.parse(text), ctx)


def layout_source(text: str) -> LayoutSource:
    return LayoutSource(ImageName.parse(text), CTX)


def all_blobs(src: ImageSource, digests: list[str]) -> dict[str, bytes]:
    out = {}
    for d in digests:
        desc = Descriptor(MediaType.OCI_LAYER, Digest.parse(d), -1)
        with src.open_blob(desc) as chunks:
            out[d] = b"".join(chunks)
    return out


def tar_of_layout(layout: Path, out: Path, *, extra: dict[str, bytes] | None = None) -> None:
    with tarfile.open(out, "w") as tar:
        tar.add(layout, arcname=".")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_round_trip_keeps_every_byte(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a", "v1")
    archive = tmp_path / "img.tar"
    with layout_source(f"oci:{img.layout}") as s, destination(f"oci-archive:{archive}:v1") as d:
        naive_copy(s, d)
    digests = [img.manifest_digest, img.config_digest, *img.layer_digests]
    with source(f"oci-archive:{archive}:v1") as back:
        assert back.get_manifest() == (img.manifest, MediaType.OCI_MANIFEST)
        assert all_blobs(back, digests) == all_blobs(layout_source(f"oci:{img.layout}"), digests)
    assert list_archive_ref_names(archive) == ["v1"]
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-2:] == ["index.json", "oci-layout"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".atoll-tmp")] == []


def test_archive_is_deterministic(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    for name in ("one.tar", "two.tar"):
        with (
            layout_source(f"oci:{img.layout}") as s,
            destination(f"oci-archive:{tmp_path / name}") as d,
        ):
            naive_copy(s, d)
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_index_round_trip(tmp_path: Path) -> None:
    index_digest, images = build_multiarch(tmp_path / "m", "multi")
    archive = tmp_path / "m.tar"
    with layout_source(f"oci:{tmp_path / 'm'}") as s, destination(f"oci-archive:{archive}") as d:
        naive_copy(s, d)
    back = source(f"oci-archive:{archive}")
    raw, media_type = back.get_manifest()
    assert (str(Digest.of(raw)), media_type) == (index_digest, MediaType.OCI_INDEX)
    arm = images["arm64"]
    assert back.get_manifest(Digest.parse(arm.manifest_digest))[0] == arm.manifest


def test_writing_replaces_an_existing_archive_like_skopeo(tmp_path: Path) -> None:
    first = build_image(tmp_path / "a", "a", seed="a")
    second = build_image(tmp_path / "b", "b", seed="b")
    archive = tmp_path / "img.tar"
    with layout_source(f"oci:{first.layout}") as s, destination(f"oci-archive:{archive}:a") as d:
        naive_copy(s, d)
    with layout_source(f"oci:{second.layout}") as s, destination(f"oci-archive:{archive}:b") as d:
        naive_copy(s, d)
    assert list_archive_ref_names(archive) == ["b"]
    with tarfile.open(archive) as tar:
        blob_names = {n.rsplit("/", 1)[1] for n in tar.getnames() if n.count("/") == 2}
    assert first.config_digest.split(":")[1] not in blob_names


def test_abort_leaves_no_archive_and_no_temp_files(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    archive = tmp_path / "out" / "img.tar"
    dest = destination(f"oci-archive:{archive}")
    naive_copy(layout_source(f"oci:{img.layout}"), dest, commit=False)
    dest.abort()
    assert not archive.exists()
    assert list_files(tmp_path / "out") == []


def test_failed_copy_leaves_an_existing_archive_untouched(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a")
    archive = tmp_path / "img.tar"
    archive.write_bytes(b"the previous archive")
    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = SystemContext(tmpdir=staging)
    bad = Descriptor(MediaType.OCI_LAYER, Digest.of(b"right"), 5)
    with pytest.raises(DigestMismatchError), destination(f"oci-archive:{archive}", ctx) as dest:
        naive_copy(layout_source(f"oci:{img.layout}"), dest, commit=False)
        dest.put_blob(bad, [b"wrong"])
    assert archive.read_bytes() == b"the previous archive"
    assert list_files(staging) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "home", "img.tar", "staging"]


@pytest.mark.parametrize("bad_name", ["../x", "blobs/../../x", "/etc/x"])
def test_entries_escaping_the_root_are_rejected(tmp_path: Path, bad_name: str) -> None:
    build_image(tmp_path / "a")
    archive = tmp_path / "evil.tar"
    tar_of_layout(tmp_path / "a", archive, extra={bad_name: b"gotcha"})
    with pytest.raises(LayerError, match=f"unsafe tar entry '{bad_name}'"):
        source(f"oci-archive:{archive}")


def test_symlink_entries_are_rejected(tmp_path: Path) -> None:
    build_image(tmp_path / "a")
    archive = tmp_path / "link.tar"
    tar_of_layout(tmp_path / "a", archive)
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo("blobs/sha256/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(LayerError, match="'blobs/sha256/link' is not a regular file"):
        source(f"oci-archive:{archive}")


def test_dot_slash_names_and_hard_links_are_read(tmp_path: Path) -> None:
    img = build_image(tmp_path / "a", "v1")
    archive = tmp_path / "dot.tar"
    tar_of_layout(tmp_path / "a", archive)  # names start with "./"
    with tarfile.open(archive, "a") as tar:
        # Replace the manifest blob by a hard link to an earlier copy of it.
        info = tarfile.TarInfo("./blobs/sha256/" + img.manifest_digest.split(":")[1])
        info.type = tarfile.LNKTYPE
        info.linkname = "./blobs/sha256/" + img.manifest_digest.split(":")[1]
        tar.addfile(info)
    assert source(f"oci-archive:{archive}:v1").get_manifest()[0] == img.manifest


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_archives_are_read(tmp_path: Path, compression: str) -> None:
    img = build_image(tmp_path / "a")
    plain = tmp_path / "plain.tar"
    tar_of_layout(tmp_path / "a", plain)
    packed = tmp_path / "packed.tar"
    if compression == "gzip":
        packed.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    with source(f"oci-archive:{packed}") as src:
        assert src.get_manifest()[0] == img.manifest
        assert all_blobs(src, list(img.layer_digests)) == all_blobs(
            layout_source(f"oci:{img.layout}"), list(img.layer_digests)
        )


def test_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        source(f"oci-archive:{tmp_path / 'absent.tar'}")
    (tmp_path / "text.tar").write_text("hello, not a tar file\n" * 100)
    with pytest.raises(LayerError, match="not a valid tar file"):
        source(f"oci-archive:{tmp_path / 'text.tar'}")
    with pytest.raises(InvalidInputError, match="is a directory"):
        source(f"oci-archive:{tmp_path}")
    with pytest.raises(InvalidInputError, match="is a directory"):
        destination(f"oci-archive:{tmp_path}")


def test_truncated_archive(tmp_path: Path) -> None:
    build_image(tmp_path / "a", layer_size=50_000)
    archive = tmp_path / "img.tar"
    tar_of_layout(tmp_path / "a", archive)
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LayerError, match=r"cut\.tar: truncated in tar entry './blobs/sha256/"):
        source(f"oci-archive:{cut}")


def test_missing_index_in_archive(tmp_path: Path) -> None:
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        marker = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker))
    with pytest.raises(NotFoundError, match=r"index not found: .*empty\.tar: index\.json"):
        source(f"oci-archive:{archive}")


# --- skopeo interoperability -----------------------------------------------------------


@pytest.mark.integration
def test_skopeo_archive_is_read_by_atoll(tmp_path: Path) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    img = build_image(tmp_path / "a", "tag")
    archive = tmp_path / "s.tar"
    skopeo.copy(f"oci:{img.layout}:tag", f"oci-archive:{archive}:tag")
    digests = [img.manifest_digest, img.config_digest, *img.layer_digests]
    with source(f"oci-archive:{archive}:tag") as src:
        assert src.get_manifest() == (img.manifest, MediaType.OCI_MANIFEST)
        assert all_blobs(src, digests) == all_blobs(layout_source(f"oci:{img.layout}"), digests)
    # Without a name, skopeo writes a nameless entry; it is the archive's only image.
    skopeo.copy(f"oci:{img.layout}:tag", f"oci-archive:{tmp_path / 'n.tar'}")
    assert source(f"oci-archive:{tmp_path / 'n.tar'}").get_manifest()[0] == img.manifest
    assert list_archive_ref_names(tmp_path / "n.tar") == []


@pytest.mark.integration
def test_atoll_archive_is_read_by_skopeo(tmp_path: Path) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    img = build_image(tmp_path / "a", "tag")
    archive = tmp_path / "a.tar"
    with layout_source(f"oci:{img.layout}") as s, destination(f"oci-archive:{archive}:tag") as d:
        naive_copy(s, d)
    assert skopeo.raw_manifest(f"oci-archive:{archive}:tag") == img.manifest
    skopeo.copy(f"oci-archive:{archive}:tag", f"oci:{tmp_path / 'b'}:tag")
    assert skopeo.inspect(f"oci:{tmp_path / 'b'}:tag")["Digest"] == img.manifest_digest
    index_digest, _ = build_multiarch(tmp_path / "m", "multi")
    with layout_source(f"oci:{tmp_path / 'm'}") as s, destination(f"oci-archive:{archive}") as d:
        naive_copy(s, d)
    skopeo.copy(f"oci-archive:{archive}", f"oci:{tmp_path / 'c'}:m", all_images=True)
    assert str(Digest.of(skopeo.raw_manifest(f"oci:{tmp_path / 'c'}:m"))) == index_digest


def test_a_damaged_header_after_the_first_is_refused(tmp_path: Path) -> None:
    """tarfile stops quietly at such a header, which made later members look absent."""
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("oci-layout", "index.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    data = bytearray(path.read_bytes())
    data[1024 + 148] ^= 0x01  # the second header's checksum
    path.write_bytes(bytes(data))
    with pytest.raises(LayerError, match="tar header at byte 1024 is damaged"):
        TarLayout(path)
