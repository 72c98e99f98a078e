"""Which patch `atoll delta create` keeps per file, and the index version it writes."""

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
    apply_patch,
    parse_index,
    sha256_hex,
)
from atoll.oci.digest import Digest
from atoll.pipeline.deltacreate import _Image, compute

OLD, NEW = Digest.of(b"old"), Digest.of(b"new")


def _image(digest: Digest, tree: dict[str, bytes]) -> _Image:
    # compute() reads the tree and the frames only; frames as big as the file:
    # every patch that is smaller than the file is worth keeping.
    frames = {sha256_hex(data): len(data) + 1 for data in tree.values()}
    return _Image(digest, None, tree, frames)  # type: ignore[arg-type]


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
    methods = {f.sha256: f.method for f in index.files.values()}
    assert methods == {
        sha256_hex(rel_new): BSDIFF,
        sha256_hex(ed_new): PATCH,
        sha256_hex(fresh): WHOLE,
    }
    assert patched == 2
    bases = {sha256_hex(rel_old): rel_old, sha256_hex(ed_old): ed_old}
    for file, data in ((rel_new, rel_old), (ed_new, ed_old), (fresh, None)):
        entry = index.files[sha256_hex(file)]
        piece = payload[entry.offset : entry.end]
        assert apply_patch(entry.method, piece, bases.get(entry.base), entry.size, "t") == file
        assert data is None or entry.base == sha256_hex(data)
    # The index with a bsdiff entry is version 2 and reads back the same.
    assert parse_index(index.to_bytes(), len(payload), "t") == index


def _index(method: str) -> DeltaIndex:
    entry = DeltaFile("a" * 64, 10, method, 0, 5, "b" * 64, 9)
    return DeltaIndex(OLD, NEW, {entry.sha256: entry})


def _version(raw: bytes) -> Any:
    import json

    import zstandard

    return json.loads(zstandard.ZstdDecompressor().decompress(raw))["version"]


def test_an_index_without_bsdiff_stays_version_1_for_older_devices() -> None:
    assert _version(_index(PATCH).to_bytes()) == 1
    assert _version(_index(BSDIFF).to_bytes()) == 2
    assert parse_index(_index(PATCH).to_bytes(), 5, "t") == _index(PATCH)


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
    with pytest.raises(DeltaError, match="not a delta index of version 1 or 2"):
        parse_index(raw, 5, "t")
