"""Which patch `atoll delta create` keeps per file, the index versions it writes
and reads, and the TOC patches it makes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from atoll.errors import DeltaError
from atoll.oci.delta import (
    BSDIFF,
    PATCH,
    WHOLE,
    DeltaFile,
    DeltaIndex,
    TocPatch,
    apply_patch,
    compress_toc,
    digests_text,
    make_bsdiff,
    make_whole,
    parse_index,
    patch_size,
    rebuild_toc,
    sha256_hex,
)
from atoll.oci.digest import Digest
from atoll.pipeline.deltacreate import _Image, compute

OLD, NEW = Digest.of(b"old"), Digest.of(b"new")


def _image(digest: Digest, tree: dict[str, bytes]) -> _Image:
    # compute() reads the tree and the frames only; frames as big as the file:
    # every patch that is smaller than the file is worth keeping.
    frames = {sha256_hex(data): len(data) + 1 for data in tree.values()}
    return _Image(digest, None, tree, frames, {})  # type: ignore[arg-type]


def _relocated(seed: str) -> tuple[bytes, bytes]:
    """A binary rebuilt at another address: every 64th byte one higher (what
    bsdiff's byte-wise differences are made for), and a few bytes inserted."""
    old = random.Random(seed).randbytes(60_000)
    new = bytearray(old)
    for at in range(0, len(new), 64):
        new[at] = (new[at] + 1) % 256
    new[30_000:30_000] = b"inserted"
    return old, bytes(new)


def _edited(seed: str) -> tuple[bytes, bytes]:
    """A data file with one block replaced: zstd's long matches win."""
    old = random.Random(seed).randbytes(60_000)
    return old, old[:20_000] + random.Random(seed + "x").randbytes(300) + old[20_300:]


def test_each_file_gets_the_smaller_patch_and_every_one_applies() -> None:
    rel_old, rel_new = _relocated("r")
    ed_old, ed_new = _edited("e")
    fresh = b"a new file " * 200
    old = _image(OLD, {"usr/bin/rel": rel_old, "usr/lib/data": ed_old})
    new = _image(NEW, {"usr/bin/rel": rel_new, "usr/lib/data": ed_new, "etc/new": fresh})
    index, payload, patched, _ = compute(old, new)
    methods = {path: f.method for path, f in index.files.items()}
    assert methods == {"usr/bin/rel": BSDIFF, "usr/lib/data": PATCH, "etc/new": WHOLE}
    assert patched == 2
    bases = {"usr/bin/rel": rel_old, "usr/lib/data": ed_old}
    for path, file in (("usr/bin/rel", rel_new), ("usr/lib/data", ed_new), ("etc/new", fresh)):
        entry = index.files[path]
        piece = payload[entry.offset : entry.end]
        base = bases.get(entry.base_path)
        assert apply_patch(entry.method, piece, base, len(file), "t") == file
        # Named by path only: NEW's TOC gives the digest the result must have.
        assert entry.path == path and not entry.sha256 and not entry.base
    assert index.version == 3
    assert parse_index(index.to_bytes(), len(payload), "t") == index


def _index(method: str) -> DeltaIndex:
    entry = DeltaFile("a" * 64, 10, method, 0, 5, "b" * 64, 9)
    return DeltaIndex(OLD, NEW, {entry.sha256: entry}, version=2)


def _version(raw: bytes) -> Any:
    import json

    import zstandard

    return json.loads(zstandard.ZstdDecompressor().decompress(raw))["version"]


def test_an_index_without_bsdiff_stays_version_1_for_older_devices() -> None:
    assert _version(_index(PATCH).to_bytes()) == 1
    assert _version(_index(BSDIFF).to_bytes()) == 2
    read = parse_index(_index(PATCH).to_bytes(), 5, "t")
    assert read.files == _index(PATCH).files and read.version == 1 and not read.by_path


def test_a_version_1_index_with_a_bsdiff_entry_is_refused() -> None:
    import json

    import zstandard

    doc = {"version": 1, "from": str(OLD), "to": str(NEW), "files": [_index(BSDIFF)
           .files["a" * 64].to_json()]}  # fmt: skip
    raw = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    with pytest.raises(DeltaError, match="not an entry with a method of version 1"):
        parse_index(raw, 5, "t")
    doc["version"] = 3
    raw = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    with pytest.raises(DeltaError, match="files\\[0\\]: not a relative path"):
        parse_index(raw, 5, "t")
    doc["version"] = 4
    raw = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    with pytest.raises(DeltaError, match="not a delta index of version 1, 2 or 3"):
        parse_index(raw, 5, "t")


def _v3() -> DeltaIndex:
    # End to end in path order; sizes and digests are NEW's TOC's to give.
    whole = DeltaFile("", 0, WHOLE, 0, 2, path="etc/c")
    same = DeltaFile("", 0, PATCH, 2, 5, path="usr/bin/a", base_path="usr/bin/a")
    moved = DeltaFile("", 0, BSDIFF, 7, 5, path="usr/lib/b.so.2", base_path="usr/lib/b.so.1")
    toc = TocPatch(f"sha256:{'c' * 64}", f"sha256:{'d' * 64}", 100, 12, 4)
    with_files = TocPatch(f"sha256:{'e' * 64}", f"sha256:{'d' * 64}", 90, 16, 4, files=True)
    files = {f.path: f for f in (same, moved, whole)}
    return DeltaIndex(OLD, NEW, files, tocs={toc.toc: toc, with_files.toc: with_files})


def test_a_version_3_index_names_files_by_path_and_reads_back() -> None:
    import json

    import zstandard

    raw = _v3().to_bytes()
    doc = json.loads(zstandard.ZstdDecompressor().decompress(raw))
    assert doc["version"] == 3
    # No sha256, size or offset; a base at the file's own path is not written twice.
    assert {key for row in doc["files"] for key in row} == {"path", "method", "base", "length"}
    assert [("base" in row) for row in doc["files"]] == [False, False, True]
    # Only a patch made with the files' digests names its dictionary (older readers
    # ignore the key, and the TOC they make does not match the annotation).
    assert [row.get("dictionary") for row in doc["tocs"]] == [None, "toc+files"]
    assert parse_index(raw, 20, "t") == _v3()
    with pytest.raises(DeltaError, match=r"tocs\[1\]: points past the end of the payload"):
        parse_index(raw, 19, "t")


def test_a_version_3_index_is_written_only_end_to_end() -> None:
    index = _v3()
    files = dict(index.files)
    files["etc/c"] = DeltaFile("", 0, WHOLE, 1, 1, path="etc/c")
    with pytest.raises(ValueError, match="end to end"):
        DeltaIndex(OLD, NEW, files).to_bytes()


def test_a_truncated_index_is_refused() -> None:
    raw = _v3().to_bytes()
    for cut in (len(raw) // 2, len(raw) - 3):
        with pytest.raises(DeltaError, match="delta index"):
            parse_index(raw[:cut], 20, "t")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("path", "/etc/passwd", "not a relative path"),
        ("path", "usr/../../x", "not a relative path"),
        ("base", "", "not a relative path"),
        ("length", -1, "non-negative integer"),
    ],
)
def test_a_version_3_entry_with_a_bad_field_is_refused(field: str, value: Any, why: str) -> None:
    import json

    import zstandard

    doc = json.loads(zstandard.ZstdDecompressor().decompress(_v3().to_bytes()))
    doc["files"][1][field] = value  # usr/bin/a, a patch
    raw = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    with pytest.raises(DeltaError, match=why):
        parse_index(raw, 20, "t")


def test_a_toc_patch_rebuilds_the_compressed_toc_byte_for_byte() -> None:
    import json

    entries = [{"type": "reg", "name": f"usr/lib/f{i}", "size": i + 1} for i in range(200)]
    old = json.dumps({"version": 1, "entries": entries}).encode()
    entries[50]["size"] = 7777
    new = json.dumps({"version": 1, "entries": [*entries, {"name": "x"}]}).encode()
    from atoll.oci.delta import make_patch

    patch = make_patch(old, new)
    entry = TocPatch(f"sha256:{sha256_hex(compress_toc(new))}", "", len(new), 0, len(patch))
    assert len(patch) < len(compress_toc(new)) / 4
    assert rebuild_toc(patch, compress_toc(old), entry, "t") == compress_toc(new)
    with pytest.raises(DeltaError, match=r"patch makes|does not decompress"):
        rebuild_toc(patch, compress_toc(old), TocPatch("", "", len(new) + 1, 0, 0), "t")


def test_a_toc_patch_of_unknown_dictionary_is_refused() -> None:
    import json

    import zstandard

    doc = json.loads(zstandard.ZstdDecompressor().decompress(_v3().to_bytes()))
    doc["tocs"][1]["dictionary"] = "toc+files+more"
    raw = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    with pytest.raises(DeltaError, match=r"tocs\[1\]: not a TOC patch with a dictionary"):
        parse_index(raw, 20, "t")


def test_a_toc_patch_with_the_files_digests_leaves_them_out() -> None:
    import json

    from atoll.oci.delta import make_patch

    def toc(digests: list[str]) -> bytes:
        entries = [
            {"type": "reg", "name": f"usr/lib/f{i}", "digest": f"sha256:{d}", "size": i + 1}
            for i, d in enumerate(digests)
        ]
        return json.dumps({"version": 1, "entries": entries}, separators=(",", ":")).encode()

    old_digests = [sha256_hex(b"old%d" % i) for i in range(100)]
    new_digests = [sha256_hex(b"new%d" % i) for i in range(100)]
    old, new = toc(old_digests), toc(new_digests)
    digests = digests_text(new_digests)
    plain = make_patch(old, new)
    patch = make_patch(old + digests, new)
    # 100 new digests are 3,200 bytes of entropy: they no longer travel.
    assert len(plain) > 3200 > 5 * len(patch)
    entry = TocPatch("", "", len(new), 0, len(patch), files=True)
    assert rebuild_toc(patch, compress_toc(old), entry, "t", digests) == compress_toc(new)
    # The device's files had other digests: the TOC it makes is not NEW's.
    other = digests_text([*new_digests[:99], sha256_hex(b"other")])
    assert rebuild_toc(patch, compress_toc(old), entry, "t", other) != compress_toc(new)


def test_a_patch_states_the_size_of_what_it_makes() -> None:
    from atoll.oci.delta import make_patch

    old, new = b"a" * 5000 + b"old", b"a" * 5000 + b"new!"
    assert patch_size(PATCH, make_patch(old, new), 1 << 20, "t") == len(new)
    assert patch_size(WHOLE, make_whole(new), 1 << 20, "t") == len(new)
    assert patch_size(BSDIFF, make_bsdiff(old, new), 1 << 20, "t") == len(new)
    with pytest.raises(DeltaError, match="states no size up to 100 bytes"):
        patch_size(PATCH, make_patch(old, new), 100, "t")
    with pytest.raises(DeltaError, match="states no size"):
        patch_size(BSDIFF, b"BSDIFF39" + bytes(40), 1 << 20, "t")
