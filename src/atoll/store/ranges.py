"""Range planning and tar rebuilding for file-level partial pulls
(:mod:`atoll.store.partial`): which byte ranges of a zstd:chunked layer to ask
for, and the layer's tar made again from its tar-split and the files, checked
against its diff_id."""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import DigestMismatchError
from atoll.oci.chunked import SplitEntry, TocFile
from atoll.oci.digest import Digest
from atoll.phases import VERIFY, PhaseClock
from atoll.store.contentindex import read_verified

#: Ranges closer than this are fetched as one (the gap's bytes are thrown away):
#: about what one more request costs in headers with a bearer token.  On
#: bench/transfer's security update 32 KiB threw away 409 KB of 5.3 MB in 23
#: requests; 2 KiB throws away 89 KB in 58.
GAP = 2 << 10
#: At most this many range requests for one layer's files.
MAX_REQUESTS = 64
#: A coalesced range grows no larger than this (unless one file is larger).
MAX_RANGE = 16 << 20


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    files: tuple[TocFile, ...]


def coalesce(files: list[TocFile], gap: int = GAP, cap: int = MAX_REQUESTS) -> list[Span]:
    """Ranges covering *files*: neighbours closer than *gap* merged (up to
    :data:`MAX_RANGE`), then the closest pairs merged until at most *cap* remain."""
    spans: list[Span] = []
    for f in sorted(files, key=lambda f: f.offset):
        if spans and f.offset - spans[-1].end <= gap and f.end - spans[-1].start <= MAX_RANGE:
            last = spans[-1]
            spans[-1] = Span(last.start, max(last.end, f.end), (*last.files, f))
        else:
            spans.append(Span(f.offset, f.end, (f,)))
    if len(spans) <= cap:
        return spans
    gaps = sorted(spans[i + 1].start - spans[i].end for i in range(len(spans) - 1))
    limit = gaps[len(spans) - cap - 1]
    merged = [spans[0]]
    for span in spans[1:]:
        last = merged[-1]
        if span.start - last.end <= limit:
            merged[-1] = Span(last.start, max(last.end, span.end), last.files + span.files)
        else:
            merged.append(span)
    return merged


def rebuilt_digest(
    entries: list[SplitEntry], files: dict[str, TocFile], local: dict[str, Path]
) -> str:
    """The sha256 of the tar *entries* make (read once, before it is fed)."""
    digest = hashlib.sha256()
    for entry in entries:
        if entry.raw is not None:
            digest.update(entry.raw)
        elif entry.size:
            toc_file = files[entry.name]
            for chunk in read_verified(local[toc_file.sha256], toc_file.sha256, entry.size):
                digest.update(chunk)
    return digest.hexdigest()


class RebuiltFeed:
    """The layer's tar, rebuilt from its tar-split and the files; the diff_id is
    checked once the last byte has been handed out."""

    def __init__(
        self,
        entries: list[SplitEntry],
        files: dict[str, TocFile],
        local: dict[str, Path],
        diff_id: Digest,
        where: str,
        fetched: int,
        clock: PhaseClock,
    ) -> None:
        self.fetched = fetched
        self._gen = self._rebuild(entries, files, local, diff_id, where, clock)

    @staticmethod
    def _rebuild(
        entries: list[SplitEntry],
        files: dict[str, TocFile],
        local: dict[str, Path],
        diff_id: Digest,
        where: str,
        clock: PhaseClock,
    ) -> Generator[bytes, None, None]:
        digest = hashlib.new(diff_id.algorithm)
        for entry in entries:
            if entry.raw is not None:
                with clock.phase(VERIFY):
                    digest.update(entry.raw)
                yield entry.raw
            elif entry.size:
                toc_file = files[entry.name]
                chunks = read_verified(local[toc_file.sha256], toc_file.sha256, entry.size)
                for chunk in clock.timed(chunks, VERIFY):
                    with clock.phase(VERIFY):
                        digest.update(chunk)
                    yield chunk
        if digest.hexdigest() != diff_id.hex:
            raise DigestMismatchError(
                f"{where}: the tar rebuilt from its table of contents does not match "
                f"diff_id {diff_id} from the image config"
            )

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def close(self) -> None:
        self._gen.close()
