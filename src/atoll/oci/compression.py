"""Streaming decompression of layer blobs (gzip, zstd or none).

Every helper takes an iterable of compressed chunks and yields decompressed
pieces of at most ``limit`` bytes, so memory stays bounded even for input that
compresses extremely well (a megabyte of gzip can hold a gigabyte of zeros).
Corrupt input raises :class:`atoll.errors.LayerError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import IO, cast

from atoll.errors import LayerError
from atoll.oci.manifest import Compression

#: Largest piece of decompressed output handed out at once.
OUTPUT_LIMIT = 1 << 20


def decompress(
    chunks: Iterable[bytes], compression: Compression, limit: int = OUTPUT_LIMIT
) -> Iterator[bytes]:
    if compression is Compression.GZIP:
        return gunzip(chunks, limit)
    if compression is Compression.ZSTD:
        return unzstd(chunks, limit)
    return iter(chunks)


def gunzip(chunks: Iterable[bytes], limit: int = OUTPUT_LIMIT) -> Iterator[bytes]:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for chunk in chunks:
            data = chunk
            while data:
                out = inflater.decompress(data, limit)
                if out:
                    yield out
                if inflater.eof:
                    # Concatenated gzip members are valid gzip; keep going.
                    data = inflater.unused_data
                    if data:
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    data = inflater.unconsumed_tail
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise LayerError(f"layer is not valid gzip data: {exc}") from None
    if not inflater.eof:
        raise LayerError("layer is not valid gzip data: it ends in the middle of a stream")


class _ChunkFile:
    """The read() side of a chunk iterator, for zstandard's stream reader."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        if size < 0 or size >= len(self._pending):
            out, self._pending = self._pending, b""
            return out
        out, self._pending = self._pending[:size], self._pending[size:]
        return out


def unzstd(chunks: Iterable[bytes], limit: int = OUTPUT_LIMIT) -> Iterator[bytes]:
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    try:
        with dctx.stream_reader(
            cast("IO[bytes]", _ChunkFile(chunks)),
            read_size=limit,
            read_across_frames=True,
            closefd=False,
        ) as reader:
            while out := reader.read(limit):
                yield out
    except zstandard.ZstdError as exc:
        raise LayerError(f"layer is not valid zstd data: {exc}") from None
