"""zstd:chunked layers: the writer, and the TOC/tar-split readers."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from atoll.errors import LayerError
from atoll.oci import chunked
from atoll.oci.chunked import (
    MANIFEST_CHECKSUM,
    MANIFEST_POSITION,
    TARSPLIT_POSITION,
    chunked_info,
    compress_tar_zstd_chunked,
    decode_file,
    parse_tar_split,
    parse_toc,
)


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc/empty").write_bytes(b"")
    (root / "etc/big").write_bytes(bytes(range(256)) * 4000)
    (root / "usr/bin/link").symlink_to("tool")
    (root / "usr/bin/zhard").hardlink_to(root / "usr/bin/tool")
    long = root / ("d" * 120)
    long.mkdir()
    (long / ("f" * 110)).write_bytes(b"long name")


def gnu_tar(root: Path, out: Path, *extra: str) -> Path:
    subprocess.run(
        [
            "tar",
            "-C",
            str(root),
            "--sort=name",
            "--mtime=@1700000000",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            *extra,
            "-cf",
            str(out),
            ".",
        ],
        check=True,
    )
    return out


@pytest.fixture
def layer_tar(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root)
    return gnu_tar(root, tmp_path / "layer.tar", "--format=pax")


def test_blob_is_an_ordinary_zstd_stream_of_the_tar(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    blob = out.read_bytes()
    assert layer.size == len(blob)
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    tar = layer_tar.read_bytes()
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    # The zstd CLI (an independent decoder) gives the tar back, byte for byte.
    plain = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    assert plain == tar


def test_same_tar_gives_the_same_bytes(layer_tar: Path, tmp_path: Path) -> None:
    a = compress_tar_zstd_chunked(layer_tar, tmp_path / "a")
    b = compress_tar_zstd_chunked(layer_tar, tmp_path / "b")
    assert a == b
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_annotations_footer_and_toc_agree(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    blob = out.read_bytes()
    assert set(layer.annotations) == {MANIFEST_CHECKSUM, MANIFEST_POSITION, TARSPLIT_POSITION}
    footer = blob[-64:]
    assert blob[-72:-68] == chunked.SKIPPABLE_MAGIC
    assert struct.unpack("<I", blob[-68:-64])[0] == 64
    assert footer[56:] == b"GNUlInUx"
    fields = struct.unpack("<7Q", footer[:56])
    toc_off, toc_len, toc_ulen, toc_type, ts_off, ts_len, ts_ulen = fields
    assert layer.annotations[MANIFEST_POSITION] == f"{toc_off}:{toc_len}:{toc_ulen}:{toc_type}"
    assert layer.annotations[TARSPLIT_POSITION] == f"{ts_off}:{ts_len}:{ts_ulen}"
    assert blob[toc_off - 8 : toc_off - 4] == chunked.SKIPPABLE_MAGIC
    info = chunked_info(layer.annotations, len(blob), "t")
    assert info is not None
    toc = parse_toc(blob[toc_off : toc_off + toc_len], info, "t")
    names = {f.name: f for f in toc.files}
    tool = names["./usr/bin/tool"]
    data = decode_file(blob[tool.offset : tool.end], tool, "t")
    assert data == b"#!/bin/sh\necho hi\n" * 100
    # Every TOC entry, directories first-class with Go's trailing slash.
    doc = json.loads(zstandard.ZstdDecompressor().decompress(blob[toc_off : toc_off + toc_len]))
    by_name = {e["name"]: e for e in doc["entries"]}
    assert by_name["./usr/bin/"]["type"] == "dir"
    link = by_name["./usr/bin/link"]
    assert {k: link[k] for k in ("type", "name", "linkName", "mode", "modtime")} == {
        "type": "symlink",
        "name": "./usr/bin/link",
        "linkName": "tool",
        "mode": 0o777,
        "modtime": "2023-11-14T22:13:20Z",
    }
    # PAX times keep their nanoseconds (containers/storage compares them with the tar's).
    assert "uid" not in link and "size" not in link
    assert by_name["./usr/bin/zhard"]["type"] == "hardlink"
    assert "digest" not in by_name["./etc/empty"]
    assert any(len(n) > 200 for n in by_name)


def test_tar_split_rebuilds_the_tar(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    blob = out.read_bytes()
    info = chunked_info(layer.annotations, len(blob), "t")
    assert info is not None and info.tar_split is not None
    toc = parse_toc(blob[info.toc.offset : info.toc.offset + info.toc.length], info, "t")
    ts = info.tar_split
    entries = parse_tar_split(blob[ts.offset : ts.offset + ts.length], toc, info, "t")
    files = {f.name: f for f in toc.files}
    rebuilt = bytearray()
    for e in entries:
        if e.raw is not None:
            rebuilt += e.raw
        elif e.size:
            f = files[e.name]
            data = decode_file(blob[f.offset : f.end], f, "t")
            assert e.crc == struct.pack(">Q", chunked.crc64_iso(data))
            rebuilt += data
    assert bytes(rebuilt) == layer_tar.read_bytes()


def _crc64_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xD800000000000000 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


@pytest.mark.parametrize("crc64", [chunked.crc64_iso, chunked.crc64_iso_python])
def test_crc64_matches_go_iso(crc64: Callable[[bytes, int], int]) -> None:
    # The CRC-64/GO-ISO check value, a plain bit-by-bit CRC for every tail
    # length, and a checksum continued piece by piece.
    assert crc64(b"123456789", 0) == 0xB90956C775A41001
    data = bytes(range(256)) * 3
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 100, len(data)):
        assert crc64(data[:n], 0) == _crc64_bitwise(data[:n])
    assert crc64(data[100:], crc64(data[:100], 0)) == _crc64_bitwise(data)


def test_the_compiled_crc64_is_the_one_used_on_build_hosts() -> None:
    # fastcrc is a dependency of the host install; without it, writing a
    # 300 MB chunked layer spends half a minute in the Python CRC.
    assert chunked._native_crc64() is not None


def _info(layer: chunked.ChunkedLayer, size: int) -> chunked.ChunkedInfo:
    info = chunked_info(layer.annotations, size, "t")
    assert info is not None
    return info


def test_toc_that_does_not_match_the_annotation_is_refused(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    blob = out.read_bytes()
    info = _info(layer, len(blob))
    data = bytearray(blob[info.toc.offset : info.toc.offset + info.toc.length])
    data[-1] ^= 1
    with pytest.raises(LayerError, match="does not match the manifest's"):
        parse_toc(bytes(data), info, "t")


def _forged(
    entries_edit: object, layer: chunked.ChunkedLayer, blob: bytes
) -> tuple[bytes, chunked.ChunkedInfo]:
    """A TOC changed by *entries_edit*, with annotations that vouch for it."""
    info = _info(layer, len(blob))
    raw = zstandard.ZstdDecompressor().decompress(
        blob[info.toc.offset : info.toc.offset + info.toc.length]
    )
    doc = json.loads(raw)
    entries_edit(doc["entries"])  # type: ignore[operator]
    new_raw = json.dumps(doc).encode()
    new_z = zstandard.ZstdCompressor().compress(new_raw)
    forged = chunked.ChunkedInfo(
        "sha256:" + hashlib.sha256(new_z).hexdigest(),
        chunked.Position(info.toc.offset, len(new_z), len(new_raw)),
        info.tar_split,
    )
    return new_z, forged


def test_toc_pointing_outside_the_layer_is_refused(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    blob = out.read_bytes()

    def outside(entries: list[dict[str, object]]) -> None:
        for e in entries:
            if e.get("digest"):
                e["endOffset"] = len(blob) + 100

    data, info = _forged(outside, layer, blob)
    with pytest.raises(LayerError, match="outside the layer's data"):
        parse_toc(data, info, "t")


def test_annotation_pointing_outside_the_layer_is_refused(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    annotations = dict(layer.annotations)
    annotations[MANIFEST_POSITION] = f"{layer.size}:100:200:1"
    with pytest.raises(LayerError, match="points outside the layer"):
        chunked_info(annotations, layer.size, "t")
    annotations[MANIFEST_POSITION] = "12:x"
    with pytest.raises(LayerError, match="malformed"):
        chunked_info(annotations, layer.size, "t")


def test_frames_that_disagree_with_the_toc_are_refused(layer_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.zst"
    layer = compress_tar_zstd_chunked(layer_tar, out)
    blob = out.read_bytes()
    info = _info(layer, len(blob))
    toc = parse_toc(blob[info.toc.offset : info.toc.offset + info.toc.length], info, "t")
    a, b = toc.files[0], toc.files[1]
    # The frames of another file, and garbage.
    with pytest.raises(LayerError, match="do not hold the file"):
        decode_file(blob[b.offset : b.end], a, "t")
    with pytest.raises(LayerError, match="not valid zstd"):
        decode_file(b"\x28\xb5\x2f\xfd" + b"\xff" * 20, a, "t")


def test_layer_without_annotations_is_not_chunked() -> None:
    assert chunked_info({}, 100, "t") is None


def _python_tar(out: Path) -> Path:
    """A tar as atoll's layer writer makes it: tarfile's PAX format, empty owner names."""
    import io
    import tarfile

    def add(name: str, kind: bytes, data: bytes = b"", **extra: object) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mtime, info.mode = kind, len(data), 1_700_000_000, 0o644
        info.uname = info.gname = ""
        for key, value in extra.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        add("usr", tarfile.DIRTYPE, mode=0o755, mtime=0)
        add("usr/bin", tarfile.DIRTYPE, mode=0o755, mtime=0)
        add("usr/bin/tool", tarfile.REGTYPE, b"#!/bin/sh\n" * 77, mode=0o755, uid=5, gid=6)
        add("usr/bin/empty", tarfile.REGTYPE)
        add("usr/bin/link", tarfile.SYMTYPE, linkname="tool", mode=0o777)
        add("usr/bin/zhard", tarfile.LNKTYPE, linkname="usr/bin/tool")
        add("usr/" + "d" * 150, tarfile.REGTYPE, b"long name", pax_headers={})
        cap = "\x01\x00\x00\x02 \x00\x00\x00"
        add(
            "usr/bin/ping",
            tarfile.REGTYPE,
            b"ping",
            pax_headers={"SCHILY.xattr.security.capability": cap},
        )
    return out


def test_a_tar_tarfile_writes_is_marked_and_rebuilt_from_its_toc_alone(
    layer_tar: Path, tmp_path: Path
) -> None:
    tar = _python_tar(tmp_path / "py.tar")
    out = tmp_path / "py.zst"
    layer = compress_tar_zstd_chunked(tar, out)
    assert layer.annotations[chunked.TAR_FROM_TOC] == chunked.TAR_FROM_TOC_VERSION
    blob = out.read_bytes()
    info = chunked_info(layer.annotations, len(blob), "t")
    assert info is not None
    toc = parse_toc(blob[info.toc.offset : info.toc.offset + info.toc.length], info, "t")
    entries = chunked.split_from_toc(toc)
    assert entries is not None
    files = {f.name: f for f in toc.files}
    rebuilt = b"".join(
        e.raw if e.raw is not None
        else decode_file(blob[files[e.name].offset : files[e.name].end], files[e.name], "t")
        for e in entries if e.raw is not None or e.size
    )  # fmt: skip
    assert rebuilt == tar.read_bytes()
    # GNU tar's PAX headers carry times the TOC does not keep: not marked.
    gnu = compress_tar_zstd_chunked(layer_tar, tmp_path / "gnu.zst")
    assert chunked.TAR_FROM_TOC not in gnu.annotations
