"""``atoll delta create OLD NEW --to docker://REPO``: compute and publish a delta.

Both images are read whole (this runs where images are built, not on a
device); the format is in :mod:`atoll.oci.delta`.  Files are matched by path:
a file NEW changed at a path OLD has is patched against OLD's file there; a
file with no such base is stored alone.  An entry is kept only when it is
smaller than the file's frames in NEW's zstd:chunked layer, so NEW must be
zstd:chunked (the device's fallback is its ranges).  Entries name files by
path (index version 3).  The TOC of each layer of NEW that OLD lacks travels
as a patch against the OLD TOC that shares the most file names with it, when
that patch is smaller and the TOC is one the device can compress back to the
same bytes (written by atoll at :data:`~atoll.oci.chunked.METADATA_LEVEL`);
against that TOC and the digests of the delta's files (``toc+files``) when
that patch is the smaller.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from atoll.errors import DeltaError, UsageError
from atoll.oci.chunked import chunked_info, parse_toc
from atoll.oci.compression import decompress
from atoll.oci.context import SystemContext
from atoll.oci.delta import (
    BSDIFF,
    PATCH,
    WHOLE,
    DeltaFile,
    DeltaIndex,
    TocPatch,
    compress_toc,
    digests_text,
    make_bsdiff,
    make_patch,
    make_whole,
    push_delta,
    sha256_hex,
    toc_json,
)
from atoll.oci.digest import Digest
from atoll.oci.imageinspect import select_manifest
from atoll.oci.manifest import Descriptor, ImageManifest, layer_compression
from atoll.oci.transports import ImageName, ImageSource, Transport, open_source
from atoll.oci.transports.docker import DockerSource

#: bsdiff only for files up to this size: its suffix sort takes about 17
#: bytes of memory per byte of the old file, and time to match.
BSDIFF_MAX = 32 << 20


@dataclass(frozen=True)
class DeltaSummary:
    old: Digest
    new: Digest
    manifest: Digest
    files: int
    patched: int
    payload: int
    #: What NEW's frames of the same files take (the ranges the delta saves).
    frames: int
    #: TOCs of NEW's changed layers carried as patches.
    tocs: int = 0


def _blob(source: ImageSource, desc: Descriptor) -> bytes:
    with source.open_blob(desc) as chunks:
        return b"".join(chunks)


def _tar_files(data: bytes, desc: Descriptor, tree: dict[str, bytes]) -> None:
    """Apply one layer to *tree* (path -> contents of regular files)."""
    raw = b"".join(decompress([data], layer_compression(desc.media_type)))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            name = posixpath.normpath(member.name.lstrip("/")).removeprefix("./")
            folder, base = posixpath.split(name)
            if base == ".wh..wh..opq":
                for path in [p for p in tree if p.startswith(f"{folder}/")]:
                    del tree[path]
            elif base.startswith(".wh."):
                gone = posixpath.join(folder, base[4:])
                for path in [p for p in tree if p == gone or p.startswith(f"{gone}/")]:
                    del tree[path]
            elif member.isreg():
                handle = tar.extractfile(member)
                assert handle is not None
                tree[name] = handle.read()
            else:
                tree.pop(name, None)


@dataclass
class _Image:
    digest: Digest
    manifest: ImageManifest
    tree: dict[str, bytes]
    #: sha256 -> the fewest compressed bytes a range pull of it moves.
    frames: dict[str, int]
    #: Layer digest -> (TOC digest, compressed TOC) of its zstd:chunked layers.
    tocs: dict[str, tuple[str, bytes]]


def _read(name: ImageName, ctx: SystemContext, *, toc: bool) -> _Image:
    with open_source(name, ctx) as source:
        _, manifest = select_manifest(source, ctx.platform)
        tree: dict[str, bytes] = {}
        frames: dict[str, int] = {}
        tocs: dict[str, tuple[str, bytes]] = {}
        for desc in manifest.layers:
            data = _blob(source, desc)
            _tar_files(data, desc, tree)
            info = chunked_info(desc.annotations, desc.size, str(name))
            if info is None:
                continue
            pos = info.toc
            payload = data[pos.offset : pos.offset + pos.length]
            parsed = parse_toc(payload, info, str(name))
            tocs[str(desc.digest)] = (info.toc_digest, payload)
            if not toc:
                continue
            for f in parsed.files:
                frames[f.sha256] = min(frames.get(f.sha256, f.end - f.offset), f.end - f.offset)
        if toc and not frames:
            raise DeltaError(
                f"{name}: no zstd:chunked layer: a delta needs NEW's table of contents",
                hint="push NEW with --dest-compress-format zstd:chunked",
            )
        return _Image(manifest.digest, manifest, tree, frames, tocs)


def _names(compressed: bytes, where: str) -> tuple[bytes, set[str]]:
    text = toc_json(compressed, where)
    entries = json.loads(text).get("entries", [])
    return text, {e["name"] for e in entries if isinstance(e, dict) and "name" in e}


def _toc_patches(
    old: _Image, new: _Image, payload: io.BytesIO, digests: bytes
) -> dict[str, TocPatch]:
    """Patches of NEW's changed layers' TOCs (see the module docstring);
    *digests*: :func:`digests_text` of the delta's files, in its index's order."""
    bases = [(digest, *_names(raw, "OLD")) for digest, raw in old.tocs.values()]
    out: dict[str, TocPatch] = {}
    for layer, (digest, raw) in new.tocs.items():
        if layer in old.tocs or digest in out or any(b[0] == digest for b in bases):
            continue  # the device has the layer, or this TOC, already
        text, names = _names(raw, "NEW")
        if not bases or compress_toc(text) != raw:
            continue  # a device could not make these exact bytes
        base, base_text, _ = max(bases, key=lambda b: len(names & b[2]))
        blob, files = make_patch(base_text, text), False
        if digests:
            # The device makes the delta's files first: their digests need not travel.
            with_files = make_patch(base_text + digests, text)
            blob, files = min((blob, False), (with_files, True), key=lambda c: len(c[0]))
        if len(blob) >= len(raw):
            continue
        out[digest] = TocPatch(digest, base, len(text), payload.tell(), len(blob), files)
        payload.write(blob)
    return out


def compute(old: _Image, new: _Image, *, tocs: bool = False) -> tuple[DeltaIndex, bytes, int, int]:
    """The index and payload, how many entries are patches, and NEW's frames they
    replace; *tocs*: with patches of NEW's changed TOCs."""
    have = {sha256_hex(data) for data in old.tree.values()}
    payload = io.BytesIO()
    files: dict[str, DeltaFile] = {}
    shas: set[str] = set()
    patched = frames = 0
    for path in sorted(new.tree):
        data = new.tree[path]
        sha = sha256_hex(data)
        if not data or sha in have or sha in shas or sha not in new.frames:
            continue
        choices: list[tuple[bytes, str]] = [(make_whole(data), WHOLE)]
        base = old.tree.get(path)
        if base:
            choices.append((make_patch(base, data), PATCH))
            if len(base) <= BSDIFF_MAX and len(data) <= BSDIFF_MAX:
                choices.append((make_bsdiff(base, data), BSDIFF))
        blob, method = min(choices, key=lambda c: len(c[0]))
        if len(blob) >= new.frames[sha]:
            continue  # the file's own frames are as small: the device takes the range
        offset = payload.tell()
        payload.write(blob)
        # Sizes and digests are NEW's TOC's to give (index version 3).
        base_path = path if method != WHOLE else ""
        files[path] = DeltaFile("", 0, method, offset, len(blob), path=path, base_path=base_path)
        shas.add(sha)
        patched += method != WHOLE
        frames += new.frames[sha]
    made = digests_text(sha256_hex(new.tree[path]) for path in sorted(files))
    toc_patches = _toc_patches(old, new, payload, made) if tocs else {}
    index = DeltaIndex(old.digest, new.digest, files, tocs=toc_patches)
    return index, payload.getvalue(), patched, frames


def create_delta(old: ImageName, new: ImageName, to: ImageName, ctx: SystemContext) -> DeltaSummary:
    """Compute the delta OLD -> NEW and publish it in *to*'s repository."""
    if to.transport is not Transport.DOCKER or to.reference is None:
        raise UsageError(f"{to}: a delta is published to a registry: use docker://HOST/REPO")
    before = _read(old, ctx, toc=False)
    after = _read(new, ctx, toc=True)
    index, payload, patched, frames = compute(before, after, tocs=True)
    with open_source(to, ctx) as dest:
        assert isinstance(dest, DockerSource)
        subject = Descriptor(after.manifest.media_type, after.digest, len(after.manifest.raw))
        digest = push_delta(dest.client, dest.reference.repository, index, payload, subject)
    return DeltaSummary(
        *(before.digest, after.digest, digest, len(index.files), patched, len(payload), frames),
        tocs=len(index.tocs),
    )


def iter_summary(summary: DeltaSummary) -> Iterator[str]:
    yield f"delta {summary.manifest}: {summary.old} -> {summary.new}"
    yield (
        f"{summary.files} files ({summary.patched} patched), {summary.payload} bytes "
        f"in place of {summary.frames} bytes of ranges; {summary.tocs} tables of contents "
        "as patches"
    )
