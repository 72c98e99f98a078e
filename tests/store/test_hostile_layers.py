"""Hostile layers: each is refused with a LayerError (or read, where GNU tar
reads it too), never hangs, never fails with an internal error, and leaves
nothing committed."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from atoll.errors import LayerError, NoSpaceError
from atoll.store import Store
from helpers.stores import import_image, walk
from helpers.treeimage import image_from_tars, make_tar

# A regression here would hang: fail instead.
pytestmark = pytest.mark.timeout(120)


def _tar(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def _file(name: str, data: bytes = b"x", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def _without_end(tar: bytes) -> bytes:
    """The archive cut after its last entry: no end-of-archive blocks."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        last = t.getmembers()[-1]
    return tar[: last.offset_data + -(-last.size // 512) * 512]


def _nothing_committed(store: Store) -> None:
    assert store.commit_ids() == []
    assert list((store.path / "tmp").iterdir()) == []


def _refused(tmp_path: Path, store: Store, tars: list[bytes], **kw: object) -> LayerError:
    image = image_from_tars(tmp_path / "img", tars, **kw)  # type: ignore[arg-type]
    with pytest.raises(LayerError) as info:
        import_image(store, image)
    _nothing_committed(store)
    # The store lock is free again: a second import may take it.
    with store.lock(wait=False):
        pass
    return info.value


# --- the end of the stream ----------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_tar_without_end_blocks_is_read_like_gnu_tar_reads_it(
    tmp_path: Path, store: Store, compression: str
) -> None:
    base = make_tar({"etc/os-release": b"ID=test\n"})
    top = _without_end(make_tar({"etc/version": b"2"}, parents=False))
    assert not top.endswith(bytes(512))
    image = image_from_tars(tmp_path / "img", [base, top], compression=compression)
    result = import_image(store, image)
    store.checkout(result.commit_id, tmp_path / "co")
    assert (tmp_path / "co/etc/version").read_bytes() == b"2"
    assert store.fsck().ok


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_an_empty_layer_is_refused(tmp_path: Path, store: Store, compression: str) -> None:
    base = make_tar({"etc/os-release": b"ID=test\n"})
    error = _refused(tmp_path, store, [base, b""], compression=compression)
    assert "the layer is empty" in str(error)


def test_a_layer_of_only_end_blocks_is_fine(tmp_path: Path, store: Store) -> None:
    # What builders write for a step that changes nothing.
    image = image_from_tars(tmp_path / "img", [make_tar({"a": b"a"}), bytes(1024)])
    assert walk_commit(store, import_image(store, image).commit_id, tmp_path) == {".", "a"}


def walk_commit(store: Store, commit_id: str, tmp_path: Path) -> set[str]:
    store.checkout(commit_id, tmp_path / "co")
    return set(walk(tmp_path / "co"))


# --- numbers in headers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "fmt", "message"),
    [
        (_file("f", uid=2**40), tarfile.GNU_FORMAT, "out of range"),
        (_file("f", gid=2**40), tarfile.GNU_FORMAT, "out of range"),
        (_file("f", uid=2**40), tarfile.PAX_FORMAT, "out of range"),
        (_file("f", uid=-1), tarfile.GNU_FORMAT, "out of range"),
        (_file("f", uid=4294967295), tarfile.PAX_FORMAT, "out of range"),
        (_file("f", gid=4294967295), tarfile.GNU_FORMAT, "out of range"),
        (_file("f", pax_headers={"size": str(10**23)}), tarfile.PAX_FORMAT, "size"),
        (_file("f", pax_headers={"uid": "1_000"}), tarfile.PAX_FORMAT, "uid"),
        (_file("f", pax_headers={"gid": "-5"}), tarfile.PAX_FORMAT, "gid"),
        (_file("f", pax_headers={"uid": "9" * 5000}), tarfile.PAX_FORMAT, "uid"),
        (
            (tarfile.TarInfo("d"), b""),
            tarfile.PAX_FORMAT,
            "size",
        ),
    ],
)
def test_numbers_out_of_range_are_refused(
    tmp_path: Path, store: Store, entry: tuple[tarfile.TarInfo, bytes], fmt: int, message: str
) -> None:
    info, _ = entry
    if info.name == "d":
        # A directory whose pax size says 2**64.
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"size": str(2**64)}
    error = _refused(tmp_path, store, [_tar(entry, fmt=fmt)])
    assert message in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("devmajor", 2**40),
        ("devminor", 2**40),
    ],
)
def test_device_numbers_out_of_range_are_refused(
    tmp_path: Path, store: Store, field: str, value: int
) -> None:
    info = tarfile.TarInfo("dev/x")
    info.type = tarfile.CHRTYPE
    setattr(info, field, value)
    image = image_from_tars(tmp_path / "img", [_tar((info, b""), fmt=tarfile.GNU_FORMAT)])
    with pytest.raises(LayerError, match="device number"):
        import_image(store, image, allow_devices=True)
    _nothing_committed(store)


def test_malformed_octal_numbers_are_refused(tmp_path: Path, store: Store) -> None:
    block = bytearray(_tar(_file("f", uid=7), fmt=tarfile.USTAR_FORMAT))
    block[108:116] = b"-000001\x00"  # int(..., 8) would take the sign
    _fix_checksum(block, 0)
    error = _refused(tmp_path, store, [bytes(block)])
    assert "malformed header" in str(error)


def test_huge_pax_headers_are_refused(tmp_path: Path, store: Store) -> None:
    entry = _file("f", pax_headers={"comment": "x" * (2 << 20)})
    error = _refused(tmp_path, store, [_tar(entry)])
    assert "pax header" in str(error)


def test_the_largest_ids_are_stored_faithfully_and_fsck_agrees(
    tmp_path: Path, store: Store
) -> None:
    top = 4294967294
    info = tarfile.TarInfo("d")
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, top, top
    tar = _tar((info, b""), _file("d/f", uid=top, gid=top - 1))
    result = import_image(store, image_from_tars(tmp_path / "img", [tar]))
    assert store.fsck().ok
    store.checkout(result.commit_id, tmp_path / "co")
    st = os.lstat(tmp_path / "co/d/f")
    assert (st.st_uid, st.st_gid) == (top, top - 1)
    st = os.lstat(tmp_path / "co/d")
    assert (st.st_uid, st.st_gid) == (top, top)


def test_a_tree_that_names_uid_minus_one_is_not_valid() -> None:
    from atoll.store.format import decode_tree

    tree = json.dumps(
        {"dirs": {"d": {"tree": "0" * 64, "mode": 493, "uid": 4294967295, "gid": 0}}, "files": {}}
    ).encode()
    with pytest.raises(ValueError, match="at most"):
        decode_tree(tree, "t")


# --- header checksums ---------------------------------------------------------------------


def _fix_checksum(block: bytearray, at: int) -> None:
    header = block[at : at + 512]
    header[148:156] = b" " * 8
    block[at + 148 : at + 156] = b"%06o\x00 " % sum(header)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_corrupt_later_header_is_refused(tmp_path: Path, store: Store, fmt: int) -> None:
    tar = bytearray(_tar(_file("a", b"a" * 600), _file("b", b"b"), fmt=fmt))
    with tarfile.open(fileobj=io.BytesIO(bytes(tar))) as t:
        second = t.getmember("b").offset
    tar[second + 5] ^= 0x01  # a bit of the name's padding
    error = _refused(tmp_path, store, [bytes(tar)])
    assert "bad header checksum" in str(error)


# --- how far a layer may expand -----------------------------------------------------------


def _set_max_layer_size(store: Store, size: int) -> Store:
    config = store.path / "store.json"
    doc = json.loads(config.read_text())
    doc["max_layer_size"] = size
    config.write_text(json.dumps(doc))
    return Store.open(store.path)


def test_max_layer_size_stops_a_decompression_bomb_early(tmp_path: Path, store: Store) -> None:
    bomb = _tar(_file("zeros", bytes(64 << 20)))
    assert len(gzip.compress(bomb, compresslevel=1)) < 1 << 20
    capped = _set_max_layer_size(store, 1 << 20)
    assert capped.max_layer_size == 1 << 20
    error = _refused(tmp_path, capped, [bomb])
    assert "max_layer_size (1048576 bytes)" in str(error)
    # A layer below the cap goes in.
    small = image_from_tars(tmp_path / "small", [_tar(_file("f", bytes(1000)))])
    import_image(capped, small)


def test_a_bad_max_layer_size_is_an_input_error(store: Store) -> None:
    from atoll.errors import InvalidInputError

    config = store.path / "store.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_layer_size": "1G"}))
    with pytest.raises(InvalidInputError, match="max_layer_size"):
        Store.open(store.path)


def test_a_layer_larger_than_the_free_space_is_refused_early(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    import subprocess

    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        store = Store.create(small / "store")
        bomb = _tar(_file("zeros", bytes(64 << 20)))
        image = image_from_tars(tmp_path / "img", [bomb])
        with pytest.raises(NoSpaceError, match="free for the object store"):
            import_image(store, image)
        _nothing_committed(store)
    finally:
        subprocess.run(["umount", str(small)], check=True)
