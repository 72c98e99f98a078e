"""The streaming tar reader against Python's tarfile, in every format OCI layers use."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

import pytest

from atoll.errors import LayerError
from atoll.oci.digest import Digest
from atoll.oci.manifest import Compression
from atoll.progress import NullProgress
from atoll.store.tarstream import ByteReader, LayerFeed, TarReader
from helpers.stores import open_image
from helpers.treeimage import build_tree_image


def _archive(fmt: int, entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def _info(name: str, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _read(
    data: bytes, piece: int = 4096
) -> list[tuple[str, str, int, int, int, str, bytes, dict[str, bytes] | None]]:
    pieces = iter([data[i : i + piece] for i in range(0, len(data), piece)])
    reader = TarReader(ByteReader(pieces), "test")
    out = []
    for e in reader.entries():
        content = (
            reader.content() if e.size and len(out) % 2 == 0 else b"".join(reader.content_pieces())
        )
        out.append(
            (e.path.rstrip("/"), e.kind, e.mode, e.uid, e.gid, e.linkname, content, e.xattrs)
        )
    return out


LONG = "usr/share/" + "very-long-directory-name/" * 8 + "file-with-a-long-name.txt"


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("piece", [1, 511, 4096, 1 << 20])
def test_entries_match_tarfile(fmt: int, piece: int) -> None:
    entries = [
        (_info("etc/", type=tarfile.DIRTYPE, mode=0o755), b""),
        (_info("etc/passwd", size=5, mode=0o644, uid=0, gid=0), b"root\n"),
        (_info("usr/bin/su", size=2, mode=0o4755), b"su"),
        (_info("usr/bin/link", type=tarfile.SYMTYPE, linkname="su"), b""),
        (_info("usr/bin/hard", type=tarfile.LNKTYPE, linkname="usr/bin/su"), b""),
        (_info("dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
        (_info("run/fifo", type=tarfile.FIFOTYPE), b""),
        (_info("big", size=70_000, uid=1000, gid=1000), bytes(range(256)) * 273 + b"x" * 112),
        (_info("empty", size=0), b""),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        entries.append((_info(LONG, size=3), b"abc"))
        entries.append((_info("l", type=tarfile.SYMTYPE, linkname=LONG), b""))
        entries.append((_info("huge-ids", size=1, uid=3_000_000_000, gid=2_500_000_000), b"u"))
    data = _archive(fmt, entries)
    ours = _read(data, piece)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        theirs = [
            (
                m.name,
                m.type.decode() if m.type != tarfile.AREGTYPE else "0",
                m.mode,
                m.uid,
                m.gid,
                m.linkname,
                tar.extractfile(m).read() if m.isreg() else b"",  # type: ignore[union-attr]
                None,
            )
            for m in tar.getmembers()
        ]
    assert ours == theirs


def test_pax_xattrs_both_spellings() -> None:
    info = _info("f", size=1)
    info.pax_headers = {
        "SCHILY.xattr.user.plain": "v1",
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
        "LIBARCHIVE.xattr.user.b64%3Dname": base64.b64encode(b"\xff\x00").decode().rstrip("="),
    }
    data = _archive(tarfile.PAX_FORMAT, [(info, b"x")])
    ((*_, xattrs),) = _read(data)
    assert xattrs == {
        "user.plain": b"v1",
        "security.capability": b"\x01\x00\x00\x02",
        "user.b64=name": b"\xff\x00",
    }


def test_device_numbers() -> None:
    data = _archive(
        tarfile.PAX_FORMAT, [(_info("d", type=tarfile.BLKTYPE, devmajor=259, devminor=7), b"")]
    )
    reader = TarReader(ByteReader(iter([data])), "test")
    (entry,) = list(reader.entries())
    assert (entry.kind, entry.devmajor, entry.devminor) == ("4", 259, 7)


def test_a_truncated_archive_is_an_error() -> None:
    data = _archive(tarfile.PAX_FORMAT, [(_info("f", size=10_000), b"x" * 10_000)])
    with pytest.raises(LayerError, match="ends in the middle"):
        _read(data[:3000])


def test_what_is_not_a_tar_archive_is_an_error() -> None:
    with pytest.raises(LayerError, match="not a tar archive"):
        _read(b"this is not a tar archive at all".ljust(2048, b"!"))


def test_sparse_files_are_refused() -> None:
    info = _info("sparse", size=0)
    info.type = tarfile.GNUTYPE_SPARSE
    raw = bytearray(_archive(tarfile.GNU_FORMAT, [(_info("sparse", size=0), b"")]))
    raw[156:157] = b"S"
    checksum = sum(raw[:148]) + 256 + sum(raw[156:512])
    raw[148:156] = b"%06o\x00 " % checksum
    with pytest.raises(LayerError, match="sparse"):
        _read(bytes(raw))


@pytest.mark.timeout(60)
def test_a_feed_that_has_ended_never_waits(tmp_path: Path) -> None:
    """Iterating a layer feed again after its end, or after its producer was
    stopped, returns or raises at once instead of waiting for a piece."""
    image = build_tree_image(tmp_path / "img", [{"a": b"a" * 5000}])
    source, manifest, _ = open_image(image)
    desc = manifest.layers[0]
    diff_id = Digest.parse(image.diff_ids[0])
    with source:
        feed = LayerFeed(source, desc, Compression.GZIP, diff_id, "test", NullProgress())
        try:
            assert b"".join(feed) == image.tars[0]
            assert list(feed) == []
            assert list(feed) == []
        finally:
            feed.close()
        stopped = LayerFeed(source, desc, Compression.GZIP, diff_id, "test", NullProgress())
        stopped.close()
        with pytest.raises(LayerError, match="stopped early"):
            b"".join(stopped)
        with pytest.raises(LayerError, match="stopped early"):
            b"".join(stopped)
