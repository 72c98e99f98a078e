"""Streaming decompression: bounded pieces, multi-member input, corrupt input refused."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from atoll.errors import LayerError
from atoll.oci.compression import decompress
from atoll.oci.manifest import Compression

ZEROS = bytes(20 << 20)  # compresses to almost nothing: output must still come in pieces


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 1000, 1 << 20])
def test_gzip_pieces_are_bounded_and_members_are_joined(size: int) -> None:
    data = gzip.compress(ZEROS[: 5 << 20]) + gzip.compress(b"second member")
    pieces = list(decompress(_chunks(data, size), Compression.GZIP, limit=1 << 16))
    assert max(len(p) for p in pieces) <= 1 << 16
    assert b"".join(pieces) == ZEROS[: 5 << 20] + b"second member"


def test_zstd_pieces_are_bounded_and_frames_are_joined() -> None:
    cctx = zstandard.ZstdCompressor()
    data = cctx.compress(ZEROS) + cctx.compress(b"second frame")
    pieces = list(decompress(_chunks(data, 4096), Compression.ZSTD, limit=1 << 16))
    assert max(len(p) for p in pieces) <= 1 << 16
    assert b"".join(pieces) == ZEROS + b"second frame"


def test_uncompressed_passes_through() -> None:
    assert list(decompress([b"a", b"b"], Compression.NONE)) == [b"a", b"b"]


@pytest.mark.parametrize(
    ("data", "compression", "message"),
    [
        (gzip.compress(b"x" * 100_000)[:-30], Compression.GZIP, "middle of a stream"),
        (b"not gzip at all", Compression.GZIP, "not valid gzip"),
        (b"not zstd at all", Compression.ZSTD, "not valid zstd"),
    ],
)
def test_corrupt_input_is_a_layer_error(
    data: bytes, compression: Compression, message: str
) -> None:
    with pytest.raises(LayerError, match=message):
        list(decompress([data], compression))
