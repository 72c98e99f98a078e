"""File-level partial pulls of zstd:chunked layers, and what each update moved.

For each layer an import has to read, :meth:`PartialPuller.feed` picks a path:

``ranges``
    The layer is zstd:chunked (:mod:`atoll.oci.chunked`) and comes from a
    registry.  Its TOC and tar-split are fetched with one ``Range`` request and
    checked (the manifest annotation's digest covers the TOC, the TOC covers
    the tar-split and every file's sha256); for a layer marked
    ``TAR_FROM_TOC`` the TOC alone, the tar being rebuilt from it and checked
    against the diff_id before it is fed (the tar-split is fetched when that
    check fails).  The TOC is not fetched when the store kept it from an
    earlier import (:mod:`atoll.store.tocs`, same digest), or when the delta
    from the running image carries it as a patch against a TOC the store kept
    and the result matches the annotation (a ``toc+files`` patch: after every
    file of the delta is made, its dictionary ending with their digests; a
    file made so is used only where the checked TOC names its sha256).  Each
    regular file is looked up in
    the store by the sha256 of its contents (:mod:`atoll.store.contentindex`)
    or among the files fetched earlier in this import; the frames of the
    others are fetched by ``Range`` requests, near ones coalesced (gaps up to
    :data:`GAP` bytes, at most :data:`MAX_REQUESTS` requests a layer), and each
    file is decompressed and checked against the TOC before it is kept.  The
    layer's tar is then rebuilt byte for byte from the tar-split and the files
    and read by the importer exactly as a downloaded one would be, its diff_id
    checked at the end: the commit is the one a whole-layer import makes.
    Files the delta makes in fewer bytes than their frames come from its
    payload instead (version 3: the base read at its path in the running commit),
    each one checked against the TOC's sha256 before it is kept.
``whole``
    The layer is downloaded whole: it has no TOC (gzip, plain zstd), the
    source is local (``oci:``, ``oci-archive:``, ``dir:``: reading it is
    cheap; a source that names a registry for ranges,
    :meth:`ImageSource.range_client`, is read as that registry, as an
    offline bundle is), the registry ignores ``Range`` (it answered 200; then every later
    layer of the import goes whole too), the store has none of its files, or
    the ranges would move nearly as much as the layer (:data:`WHOLE_SHARE`).
    The TOC and tar-split fetched to decide count in the layer's bytes.
``present``
    The store had the layer already (a layer-chain record): nothing was read.

Every zstd:chunked layer's TOC, read by range or copied as the whole blob
streams past, is kept by the store once the import succeeds, for the next
update's delta and partial pull.

Refused (the import fails, nothing is published, the booted deployment is
untouched): a TOC that does not match its annotation, a TOC that points outside
the layer, frames that do not hold the file the TOC names, a range answer
of the wrong length or place, a tar-split that disagrees with the TOC, and a
rebuilt tar whose digest is not the diff_id.  A connection that breaks in the
middle of a range is asked again for the rest (:meth:`RegistryClient.fetch_range`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from atoll.errors import (
    AtollError,
    DeltaError,
    LayerError,
    LocalIOError,
    NoSpaceError,
    NotFoundError,
    RangesIgnoredError,
    StoreCorruptError,
)
from atoll.fsutil import write_atomic
from atoll.oci.chunked import (
    TAR_FROM_TOC,
    TAR_FROM_TOC_VERSION,
    ChunkedInfo,
    SplitEntry,
    Toc,
    TocFile,
    chunked_info,
    decode_file,
    parse_tar_split,
    parse_toc,
    split_from_toc,
)
from atoll.oci.delta import (
    FOUND_REQUESTS,
    LOOKUP_REQUESTS,
    PATCHES,
    DeltaFile,
    FoundDelta,
    apply_patch,
    digests_text,
    find_delta,
    patch_size,
    rebuild_toc,
)
from atoll.oci.digest import Digest
from atoll.oci.manifest import Compression, Descriptor, ImageManifest, layer_compression
from atoll.phases import DECOMPRESS, FETCH, VERIFY, PhaseClock
from atoll.progress import ProgressSink
from atoll.store.contentindex import ContentIndex, read_verified
from atoll.store.format import FILE_SUFFIX, STAGING_PREFIX, TMP_DIR
from atoll.store.importer import expand_limit
from atoll.store.importrecords import find_import
from atoll.store.ranges import RebuiltFeed, Span, coalesce, rebuilt_digest
from atoll.store.tarstream import LayerFeed
from atoll.store.tocs import find_toc, keep_toc
from atoll.store.transferreport import (
    DELTA,
    PRESENT,
    RANGES,
    WHOLE,
    LayerTransfer,
    TransferReport,
)

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient
    from atoll.oci.transports.base import ImageSource
    from atoll.store.importer import ImportResult
    from atoll.store.store import Store

#: When the ranges would move this share of the layer or more, fetch it whole.
WHOLE_SHARE = 0.9
#: Range requests of one layer in flight at once (a long round trip, as on a
#: satellite link, is paid once per batch instead of once per request).
PARALLEL = 4


class Feed(Protocol):
    """The uncompressed tar of a layer, as the importer reads it."""

    fetched: int

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class PartialPuller:
    """Chooses each layer's path and fetches ranges; see the module docstring."""

    def __init__(
        self,
        store: Store,
        source: ImageSource,
        progress: ProgressSink,
        delta: tuple[Digest, Digest] | None = None,
    ) -> None:
        self.store = store
        self._source = source
        #: (OLD, NEW) manifest digests: look for a delta between them.
        self._delta_pair = delta
        self._delta: FoundDelta | None = None
        self._delta_looked = False
        self.progress = progress
        self.report = TransferReport()
        self.clock = PhaseClock()
        self._client: RegistryClient | None = None
        self._repository = ""
        ranged = source.range_client()
        if ranged is not None:
            self._client, self._repository = ranged
        self._ranges_ok = True
        self._index: ContentIndex | None = None
        #: Files fetched in this import: sha256 -> a temporary file.
        self._fetched: dict[str, Path] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        #: TOCs read (diff_id, TOC digest, compressed bytes), and whole layers
        #: whose TOC is copied as they pass: kept once the import succeeds.
        self._tocs: list[tuple[str, str, bytes]] = []
        self._captures: list[tuple[str, str, LayerFeed]] = []
        #: Path -> file object of the running commit (version 3 deltas' bases).
        self._running: dict[str, str] | None = None
        #: The delta's files made before any TOC (sha256s; None: not tried),
        #: and their digests as a ``toc+files`` TOC patch's dictionary ends.
        self._made_first: set[str] | None = None
        self._digests: bytes | None = None
        self._first_why = ""

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PartialPuller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keep_tocs(self) -> None:
        """Keep the TOCs this import read (:mod:`atoll.store.tocs`); a copy
        that does not match its digest is not kept."""
        for diff_id, digest, data in self._tocs:
            keep_toc(self.store, diff_id, digest, data)
        for diff_id, digest, feed in self._captures:
            keep_toc(self.store, diff_id, digest, bytes(feed.kept))

    def _capture(self, desc: Descriptor, diff_id: Digest) -> Feed | None:
        """The whole layer's feed, copying its TOC as it passes (None: it has none)."""
        where = self._source.description
        info = layer_toc(desc, where)
        if isinstance(info, str):
            return None
        toc = (info.toc.offset, info.toc.offset + info.toc.length)
        compression = layer_compression(desc.media_type)
        limit = expand_limit(self.store)
        feed = LayerFeed(
            self._source, desc, compression, diff_id, where, self.progress, limit, self.clock, toc
        )
        self._captures.append((str(diff_id), info.toc_digest, feed))
        return feed

    def finish(self, manifest: ImageManifest) -> TransferReport:
        """The report, with the layers the import never asked for as present."""
        asked = {layer.digest for layer in self.report.layers}
        for desc in manifest.layers:
            if str(desc.digest) not in asked:
                self.report.layers.append(
                    LayerTransfer(str(desc.digest), PRESENT, "in the store", size=desc.size)
                )
        return self.report

    def _whole(self, desc: Descriptor, reason: str, spent: LayerTransfer | None = None) -> None:
        row = spent or LayerTransfer(str(desc.digest), WHOLE)
        row.path, row.reason, row.size = WHOLE, reason, desc.size
        row.bytes += desc.size
        row.requests += 1
        if spent is None:
            self.report.layers.append(row)

    def whole(self, desc: Descriptor, diff_id: Digest, where: str) -> Feed | None:
        """Every layer whole (partial pulls turned off), and reported."""
        self._whole(desc, "partial pulls are off")
        return None

    def feed(self, desc: Descriptor, diff_id: Digest, where: str) -> Feed | None:
        """A feed for the layer by ranges, or None: the importer downloads it whole."""
        info = self._info(desc, where)
        if isinstance(info, str):
            self._whole(desc, info)
            return self._capture(desc, diff_id)
        row = LayerTransfer(str(desc.digest), RANGES, size=desc.size)
        self.report.layers.append(row)
        try:
            return self._by_ranges(desc, info, diff_id, where, row)
        except RangesIgnoredError:
            self._ranges_ok = False
            self._whole(desc, "the registry ignores Range requests", row)
            return self._capture(desc, diff_id)

    def _info(self, desc: Descriptor, where: str) -> ChunkedInfo | str:
        info = layer_toc(desc, where)
        if isinstance(info, str):
            return info
        if self._client is None:
            return "a local source"
        if not self._ranges_ok:
            return "the registry ignores Range requests"
        if not self._fetched and not self._content_index().by_sha:
            # A first install: no file can be found, so the TOC is not worth a request.
            return "the store has no files yet"
        return info

    def _fetch(self, desc: Descriptor, start: int, end: int) -> bytes:
        assert self._client is not None
        with self.clock.phase(FETCH):
            data = self._client.fetch_range(self._repository, desc.digest, start, end - start)
        self.progress.advance(f"{desc.digest}#ranges", len(data))
        return data

    def _range(self, desc: Descriptor, start: int, end: int, row: LayerTransfer) -> bytes:
        data = self._fetch(desc, start, end)
        row.bytes += len(data)
        row.requests += 1
        return data

    def _by_ranges(
        self, desc: Descriptor, info: ChunkedInfo, diff_id: Digest, where: str, row: LayerTransfer
    ) -> Feed | None:
        split_pos = info.tar_split
        assert split_pos is not None
        toc_end = info.toc.offset + info.toc.length
        # A layer marked TAR_FROM_TOC: the TOC alone, the tar-split only if needed.
        from_toc = desc.annotations.get(TAR_FROM_TOC) == TAR_FROM_TOC_VERSION
        start = info.toc.offset if from_toc else min(info.toc.offset, split_pos.offset)
        end = toc_end if from_toc else max(toc_end, split_pos.offset + split_pos.length)
        sub = f"{desc.digest}#ranges"
        self.progress.subtask(sub, RANGES, f"ranges of {desc.digest.short}", end - start)
        toc_raw = self._known_toc(desc, info, where, row)
        split_raw: bytes | None = None
        if toc_raw is None:
            meta = self._range(desc, start, end, row)
            row.metadata_bytes = len(meta)
            toc_raw = meta[info.toc.offset - start :][: info.toc.length]
            if not from_toc:
                split_raw = meta[split_pos.offset - start :][: split_pos.length]
        toc = parse_toc(toc_raw, info, where)
        self._tocs.append((str(diff_id), info.toc_digest, toc_raw))
        files = {f.name: f for f in toc.files}
        rebuilt = split_from_toc(toc) if from_toc else None
        if rebuilt is None:
            if split_raw is None:
                split_end = split_pos.offset + split_pos.length
                split_raw = self._range(desc, split_pos.offset, split_end, row)
                row.metadata_bytes += len(split_raw)
            entries = self._split(split_raw, toc, info, where)
        else:
            entries = rebuilt
        local: dict[str, Path] = {}
        wanted: dict[str, TocFile] = {}
        index = self._content_index()
        for entry in entries:
            if entry.raw is not None or not entry.size:
                continue
            toc_file = files[entry.name]
            sha = toc_file.sha256
            if sha in local or sha in wanted:
                continue
            path = self._fetched.get(sha) or index.path(sha)
            if path is not None:
                local[sha] = path
                if self._made_first and sha in self._made_first:
                    row.files_delta += 1
                else:
                    row.files_present += 1
            else:
                wanted[sha] = toc_file
        names: dict[str, list[str]] = {}
        for f in toc.files:
            names.setdefault(f.sha256, []).append(f.name)
        by_delta = self._delta_plan(wanted, names, row, where)
        for sha in by_delta:
            del wanted[sha]
        delta_spans = coalesce([_as_toc(sha, entry) for sha, (_, entry, _) in by_delta.items()])
        spans = coalesce(list(wanted.values()))
        by_patch = sum(s.end - s.start for s in delta_spans)
        planned = sum(s.end - s.start for s in spans) + by_patch
        if (not local and not by_delta) or row.bytes + planned >= WHOLE_SHARE * desc.size:
            reason = (
                "the store has none of its files"
                if not local and not by_delta
                else f"ranges would move {planned} of its {desc.size} bytes"
            )
            self.progress.done(sub)
            self._whole(desc, reason, row)
            return None
        # From here the layer moves by ranges: its progress is theirs, not the blob's.
        self.progress.subtask(str(desc.digest), "layer", f"layer {desc.digest.short}", 0)
        self.progress.subtask(
            sub, RANGES, f"ranges of {desc.digest.short}", row.bytes + planned - by_patch
        )
        self.progress.advance(sub, row.bytes)
        if by_delta:
            self.progress.subtask(
                f"{desc.digest}#delta", DELTA, f"delta for {desc.digest.short}", by_patch
            )
            try:
                self._apply_delta(by_delta, delta_spans, local, row, where)
            except (NoSpaceError, LocalIOError):
                raise
            except AtollError as exc:
                # Never trust a delta: what it did not make comes by ranges.
                self._drop_delta(f"refused: {exc}")
                wanted.update({sha: f for sha, (f, _, _) in by_delta.items() if sha not in local})
                spans = coalesce(list(wanted.values()))
                more = sum(s.end - s.start for s in spans)
                self.progress.subtask(
                    sub,
                    RANGES,
                    f"ranges of {desc.digest.short}",
                    row.bytes - row.delta_bytes + more,
                )
                self.progress.advance(sub, row.bytes - row.delta_bytes)
            self.progress.done(f"{desc.digest}#delta")
        if not spans and row.delta_bytes:
            row.path = DELTA
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="ranges") as pool:
            # In order, at most PARALLEL ahead: memory stays at a few ranges.
            pending: dict[int, Future[bytes]] = {}
            for i, span in enumerate(spans):
                for ahead in range(i, min(i + PARALLEL, len(spans))):
                    if ahead not in pending:
                        nxt = spans[ahead]
                        pending[ahead] = pool.submit(self._fetch, desc, nxt.start, nxt.end)
                data = pending.pop(i).result()
                row.bytes += len(data)
                row.requests += 1
                for toc_file in span.files:
                    frames = data[toc_file.offset - span.start : toc_file.end - span.start]
                    # Decoding checks the file's sha256 too (one pass, counted here).
                    with self.clock.phase(DECOMPRESS):
                        content = decode_file(frames, toc_file, where)
                    local[toc_file.sha256] = self._keep(toc_file.sha256, content)
                    row.files_fetched += 1
        self.progress.done(sub)
        if rebuilt is not None and rebuilt_digest(rebuilt, files, local) != diff_id.hex:
            # This Python's tarfile writes other headers than the builder's did.
            split = self._range(desc, split_pos.offset, split_pos.offset + split_pos.length, row)
            row.metadata_bytes += len(split)
            entries = self._split(split, toc, info, where)
        return RebuiltFeed(entries, files, local, diff_id, where, row.bytes, self.clock)

    @staticmethod
    def _split(data: bytes, toc: Toc, info: ChunkedInfo, where: str) -> list[SplitEntry]:
        """The tar-split, checked to list the TOC's files with the TOC's sizes."""
        entries = parse_tar_split(data, toc, info, where)
        files = {f.name: f for f in toc.files}
        for entry in entries:
            if entry.raw is not None or not entry.size:
                continue
            toc_file = files.get(entry.name)
            if toc_file is None or toc_file.size != entry.size:
                raise LayerError(
                    f"{where}: its tar-split lists {entry.name!r} ({entry.size} bytes), "
                    "which its table of contents does not",
                    hint="the layer's metadata is inconsistent; the image is corrupt",
                )
        return entries

    def _drop_delta(self, why: str) -> None:
        self._delta = None
        self.report.delta = why

    def _find_delta(self, where: str) -> FoundDelta | None:
        if self._delta_looked or self._delta_pair is None or self._client is None:
            return self._delta
        self._delta_looked = True
        old, new = self._delta_pair
        try:
            self._delta = find_delta(self._client, self._repository, old, new)
        except (NoSpaceError, LocalIOError):
            raise
        except AtollError as exc:
            self._drop_delta(f"refused: {exc}")
            return None
        if self._delta is None:
            self.report.delta = f"none published from {old}"
            self.report.delta_lookup_requests += LOOKUP_REQUESTS
            return None
        self.report.delta = str(self._delta.manifest)
        self.report.delta_lookup_bytes += self._delta.lookup_bytes
        self.report.delta_lookup_requests += FOUND_REQUESTS
        return self._delta

    def _delta_plan(
        self,
        wanted: dict[str, TocFile],
        names: dict[str, list[str]],
        row: LayerTransfer,
        where: str,
    ) -> dict[str, tuple[TocFile, DeltaFile, Path | None]]:
        """The wanted files the delta makes in fewer bytes than their ranges,
        with their bases (None: stored whole)."""
        if not wanted:
            return {}
        found = self._find_delta(where)
        if found is None:
            return {}
        index = found.index
        plan: dict[str, tuple[TocFile, DeltaFile, Path | None]] = {}
        no_base = 0
        for sha, toc_file in wanted.items():
            if index.by_path:
                keys = names.get(sha, [toc_file.name])
                entry = next((index.files[k] for k in keys if k in index.files), None)
            else:
                entry = index.files.get(sha)
            # Version 3 carries no sizes: the TOC's is the one the result must have.
            if entry is None or (not index.by_path and entry.size != toc_file.size):
                continue
            if entry.length >= toc_file.end - toc_file.offset:
                continue
            base: Path | None = None
            if entry.method in PATCHES and index.by_path:
                base = self._running_file(entry.base_path)
                no_base += base is None
            elif entry.method in PATCHES:
                base = self._fetched.get(entry.base) or self._content_index().path(entry.base)
            if entry.method in PATCHES and base is None:
                continue
            plan[sha] = (toc_file, entry, base)
        if no_base:
            why = (
                f"{no_base} files of the delta have no base at their path in the running "
                "commit: fetched by range"
            )
            row.reason = f"{row.reason}; {why}" if row.reason else why
        return plan

    def _running_file(self, path: str) -> Path | None:
        """The regular file at *path* in the commit the device runs (the
        delta's OLD), or None."""
        if self._running is None:
            self._running = {}
            assert self._delta_pair is not None
            tree = _commit_tree(self.store, self._delta_pair[0])
            with contextlib.suppress(StoreCorruptError):  # missing trees lend no bases
                self._running = _files_by_path(self.store, tree) if tree else {}
        oid = self._running.get(path)
        if oid is None:
            return None
        found = self.store.object_path(oid, FILE_SUFFIX)
        try:
            st = os.lstat(found)
        except OSError:
            return None
        return found if stat.S_ISREG(st.st_mode) else None

    def _known_toc(
        self, desc: Descriptor, info: ChunkedInfo, where: str, row: LayerTransfer
    ) -> bytes | None:
        """The layer's compressed TOC without fetching it: kept by the store
        from an earlier import, or made from the delta's patch against a TOC
        the store kept; None: fetch it.  Checked against the annotation here
        and again by :func:`parse_toc`."""
        kept = find_toc(self.store, info.toc_digest)
        if kept is not None:
            return kept
        found = self._find_delta(where) if self._delta_pair is not None else None
        patch = found.index.tocs.get(info.toc_digest) if found is not None else None
        base = find_toc(self.store, patch.base) if patch is not None else None
        if found is None or patch is None or base is None:
            return None
        assert self._client is not None
        what = f"{where}: delta {found.manifest}"
        digests = self._files_first(found, row, what) if patch.files else b""
        if digests is None:
            row.reason = (
                f"the files of delta {found.manifest} were not all made, which its table of "
                f"contents patch needs ({self._first_why}): fetched whole"
            )
            return None
        try:
            with self.clock.phase(FETCH):
                data = self._client.fetch_range(
                    found.repository, found.payload.digest, patch.offset, patch.length
                )
            row.bytes += len(data)
            row.requests += 1
            row.delta_bytes += len(data)
            row.delta_requests += 1
            if len(data) != patch.length:
                raise DeltaError(f"{what}: a TOC patch came back {len(data)} bytes long")
            with self.clock.phase(DECOMPRESS):
                made = rebuild_toc(data, base, patch, what, digests)
        except (NoSpaceError, LocalIOError):
            raise
        except AtollError as exc:
            row.reason = f"its table of contents from the delta was refused ({exc}): fetched whole"
            return None
        if "sha256:" + hashlib.sha256(made).hexdigest() != info.toc_digest:
            row.reason = (
                f"its table of contents made from delta {found.manifest} does not match the "
                "manifest's annotation: fetched whole"
            )
            return None
        return made

    def _files_first(self, found: FoundDelta, row: LayerTransfer, what: str) -> bytes | None:
        """Every file of the (version 3) delta, made before any TOC and kept by
        the sha256 of what was made, so a layer uses one only where its TOC
        names that digest; the digests in the index's order
        (:func:`digests_text`), or None: not every file could be made."""
        if self._made_first is not None:
            return self._digests
        self._made_first = set()
        index = found.index
        entries = [index.files[path] for path in sorted(index.files)]
        bases: dict[str, Path | None] = {}
        for entry in entries:
            if entry.method in PATCHES:
                bases[entry.path] = self._running_file(entry.base_path)
                if bases[entry.path] is None:
                    self._first_why = f"no {entry.base_path} in the running commit"
                    return None
        if not index.by_path or not entries:
            self._first_why = "it has no files"
            return None
        assert self._client is not None
        limit = expand_limit(self.store).size
        shas: list[str] = []
        spans = coalesce([_as_toc(entry.path, entry) for entry in entries])
        sub = f"{found.manifest}#files"
        total = sum(span.end - span.start for span in spans)
        self.progress.subtask(sub, DELTA, f"files of delta {found.manifest.short}", total)
        try:
            for span in spans:
                with self.clock.phase(FETCH):
                    data = self._client.fetch_range(
                        found.repository, found.payload.digest, span.start, span.end - span.start
                    )
                self.progress.advance(sub, len(data))
                row.bytes += len(data)
                row.requests += 1
                row.delta_bytes += len(data)
                row.delta_requests += 1
                for piece in span.files:
                    entry = index.files[piece.sha256]
                    patch = data[entry.offset - span.start : entry.end - span.start]
                    size = patch_size(entry.method, patch, limit, what)
                    limit -= size
                    base_path = bases.get(entry.path)
                    base = base_path.read_bytes() if base_path is not None else None
                    with self.clock.phase(DECOMPRESS):
                        content = apply_patch(entry.method, patch, base, size, what)
                    with self.clock.phase(VERIFY):
                        sha = hashlib.sha256(content).hexdigest()
                    self._keep(sha, content)
                    self._made_first.add(sha)
                    shas.append(sha)
        except (NoSpaceError, LocalIOError):
            raise
        except AtollError as exc:
            self._first_why = str(exc)
            return None
        finally:
            self.progress.done(sub)
        self._digests = digests_text(shas)
        return self._digests

    def _apply_delta(
        self,
        plan: dict[str, tuple[TocFile, DeltaFile, Path | None]],
        spans: list[Span],
        local: dict[str, Path],
        row: LayerTransfer,
        where: str,
    ) -> None:
        """Make the planned files from the delta's payload, each one checked
        against the sha256 of NEW's TOC before it is kept."""
        found = self._delta
        assert found is not None and self._client is not None
        what = f"{where}: delta {found.manifest}"
        for span in spans:
            with self.clock.phase(FETCH):
                data = self._client.fetch_range(
                    found.repository, found.payload.digest, span.start, span.end - span.start
                )
            self.progress.advance(f"{row.digest}#delta", len(data))
            row.bytes += len(data)
            row.requests += 1
            row.delta_bytes += len(data)
            row.delta_requests += 1
            for piece in span.files:
                toc_file, entry, base_path = plan[piece.sha256]
                base = None
                if base_path is not None and found.index.by_path:
                    # No digest to check the base by: the result is checked below.
                    base = base_path.read_bytes()
                elif base_path is not None:
                    with self.clock.phase(VERIFY):
                        base = b"".join(read_verified(base_path, entry.base, entry.base_size))
                patch = data[entry.offset - span.start : entry.end - span.start]
                with self.clock.phase(DECOMPRESS):
                    content = apply_patch(entry.method, patch, base, toc_file.size, what)
                with self.clock.phase(VERIFY):
                    made = hashlib.sha256(content).hexdigest()
                if made != toc_file.sha256:
                    raise DeltaError(
                        f"{what}: makes {toc_file.name} with other contents than the "
                        f"sha256:{toc_file.sha256} its table of contents names",
                        hint="the delta is corrupt or was made for other images; recreate it",
                    )
                local[toc_file.sha256] = self._keep(toc_file.sha256, content)
                row.files_delta += 1

    def _content_index(self) -> ContentIndex:
        if self._index is None:
            self._index = ContentIndex.load(self.store)
        return self._index

    def _keep(self, sha: str, content: bytes) -> Path:
        """A verified file, kept until the import ends (later layers may share it)."""
        if self._tmp is None:
            folder = self.store.path / TMP_DIR
            # Named like a staging directory: the next import removes it after a crash.
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}partial-", dir=folder)
        path = Path(self._tmp.name) / sha
        with contextlib.suppress(FileExistsError):
            write_atomic(path, content, durable=False)
        self._fetched[sha] = path
        return path


def _as_toc(sha: str, entry: DeltaFile) -> TocFile:
    """A delta entry as :func:`coalesce` places it (offsets in the payload)."""
    return TocFile(sha, entry.size, sha, entry.offset, entry.end)


def _commit_tree(store: Store, manifest_digest: Digest) -> str | None:
    """The root tree of a commit imported from *manifest_digest*: by the
    import record, else by the commits' own ``manifest_digest``."""
    found = find_import(store, manifest_digest)
    if found is not None:
        return found.tree
    for commit_id in store.commit_ids():
        try:
            commit = store.commit(commit_id)
        except (StoreCorruptError, NotFoundError):
            continue
        if commit.manifest_digest == str(manifest_digest) and not store.is_partial(commit_id):
            return commit.tree
    return None


def _files_by_path(store: Store, tree_id: str) -> dict[str, str]:
    """Path -> file object id of every non-directory entry under *tree_id*."""
    out: dict[str, str] = {}
    pending = [("", tree_id)]
    while pending:
        prefix, tid = pending.pop()
        tree = store.tree(tid)
        out.update((prefix + name, oid) for name, oid in tree.files.items())
        pending.extend((f"{prefix}{name}/", sub) for name, (sub, _) in tree.dirs.items())
    return out


def layer_toc(desc: Descriptor, where: str) -> ChunkedInfo | str:
    """Where the layer's table of contents and tar-split are, or why it has none."""
    if layer_compression(desc.media_type) is not Compression.ZSTD:
        return "not a zstd layer"
    info = chunked_info(desc.annotations, desc.size, where)
    if info is None:
        return "no table of contents"
    if info.tar_split is None:
        return "no tar-split"
    return info


def import_image(
    store: Store,
    source: ImageSource,
    manifest: ImageManifest,
    config_raw: bytes,
    *,
    image: str,
    manifest_digest: Digest,
    progress: ProgressSink,
    partial: bool = True,
    delta_from: Digest | None = None,
) -> tuple[ImportResult, TransferReport]:
    """:meth:`Store.import_image` with each layer on its path (*partial* False:
    every layer whole, as before), and what it moved.  *delta_from*: the
    running image's digest, to look for a delta from it."""
    pair = (delta_from, manifest_digest) if delta_from is not None else None
    started = time.monotonic()
    with PartialPuller(store, source, progress, pair) as puller:
        result = store.import_image(
            source,
            manifest,
            config_raw,
            image=image,
            manifest_digest=manifest_digest,
            progress=progress,
            layer_feeds=puller.feed if partial else puller.whole,
            clock=puller.clock,
        )
        report = puller.finish(manifest)
        puller.keep_tocs()
        if partial and any(isinstance(layer_toc(d, image), ChunkedInfo) for d in manifest.layers):
            # The next update's partial pull looks files up by their contents: index
            # the new commit now (only objects no other commit has are read), so
            # that pull does not start by hashing the whole store.
            ContentIndex.load(store)
        report.seconds = {
            **puller.clock.seconds(),
            "elapsed": round(time.monotonic() - started, 6),
        }
        return result, report
