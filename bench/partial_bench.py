"""Benchmark: bytes a device moves to update one big layer, by path, same run.

Builds v1 of a tree from real files of this machine's /usr (one layer of about
``--size`` MB), and v2 where ``--changed`` files spread over it have new
contents (as a security update of a few packages does).  Both are written as
zstd:chunked layers (atoll.oci.chunked), pushed to a local Distribution
registry, and a store that holds v1 imports v2:

* whole layer: the blob a layer pull moves (also gzip -6 for reference);
* partial: what atoll's file-level pull moved (ranges, requests);
* F_file: zstd -19 of the files the device lacks, as one stream (the floor).

Prints bytes and the ratios partial / F_file and partial / whole.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

from atoll.demo.registry import LocalRegistry
from atoll.oci.chunked import compress_tar_zstd_chunked
from atoll.oci.context import SystemContext
from atoll.oci.imagecopy import copy_image
from atoll.oci.transports import ImageName
from atoll.store import Store
from atoll.sysroot.fetch import import_remote

SOURCES = ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share", "/usr/lib"]
MTIME = 1_700_000_000
MAX_FILE = 4 << 20


def pick_files(target: int) -> list[Path]:
    files, total, seen = [], 0, set()
    for root in SOURCES:
        for dirpath, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath) / name
                if path in seen or path.is_symlink() or not path.is_file():
                    continue
                # Many files of everyday sizes, as in an OS tree (no single giant).
                if path.stat().st_size > MAX_FILE:
                    continue
                seen.add(path)
                files.append(path)
                total += path.stat().st_size
                if total >= target:
                    return files
    return files


def changed_content(data: bytes, seed: str) -> bytes:
    """New contents of about the same size and kind: a rebuilt file differs
    all over (a byte in every 64 changed, and 1 KiB more)."""
    out = bytearray(data)
    for i in range(0, len(out), 64):
        out[i] = (out[i] + 1) & 0xFF
    return bytes(out) + hashlib.sha256(seed.encode()).digest() * 32


def write_tar(files: list[Path], changed: dict[Path, bytes], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            data = changed.get(path)
            if data is None:
                data = path.read_bytes()
            info = tarfile.TarInfo(str(path).lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o755, MTIME
            tar.addfile(info, io.BytesIO(data))


def write_image(layout: Path, ref: str, blob: Path, layer: object) -> None:
    from atoll.oci.chunked import ChunkedLayer

    assert isinstance(layer, ChunkedLayer)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blob, blobs / layer.digest.split(":")[1])

    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                    "digest": layer.digest,
                    "size": layer.size,
                    "annotations": dict(layer.annotations),
                }
            ],
        }
    ).encode()
    index_path = layout / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "manifests": []}
    )
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": ref},
        }
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path.write_text(json.dumps(index))


def pull(store: Store, name: str, ctx: SystemContext, partial: bool) -> tuple[int, int, float, int]:
    """(bytes moved, requests, seconds, TOC and tar-split bytes) of importing *name*."""
    started = time.monotonic()
    result, report = import_remote(store, ImageName.parse(name), ctx, partial=partial)
    elapsed = time.monotonic() - started
    meta = sum(r.metadata_bytes for r in report.layers)
    if partial:
        return report.bytes_moved, sum(r.requests for r in report.layers), elapsed, meta
    return result.stats.bytes_fetched, len(report.layers), elapsed, 0


def write_versions(
    tmp: Path, files: list[Path], changed: dict[Path, bytes], level: int, what: str
) -> tuple[Path, Path]:
    """The layout with tags 1 and 2 (v2 with *changed*), and v2's tar."""
    print(
        f"tree: {len(files)} files, {sum(f.stat().st_size for f in files) >> 20} MiB; "
        f"v2 changes {len(changed)} {what}, {sum(len(d) for d in changed.values()) >> 10} KiB",
        flush=True,
    )
    layout = tmp / "layout"
    for version, edits in (("1", {}), ("2", changed)):
        tar = tmp / f"v{version}.tar"
        write_tar(files, edits, tar)
        blob = tmp / f"v{version}.zst"
        started = time.monotonic()
        layer = compress_tar_zstd_chunked(tar, blob, level=level)
        took = time.monotonic() - started
        print(f"v{version}: zstd:chunked layer {layer.size} B, written in {took:.1f} s")
        write_image(layout, version, blob, layer)
    return layout, tar


def print_table(rows: list[tuple[str, int, object, str]], width: int = 40) -> None:
    print(f"\n{'path':<{width}} {'bytes':>12} {'requests':>9} {'import':>8}")
    for name, nbytes, req, secs in rows:
        print(f"{name:<{width}} {nbytes:>12} {req!s:>9} {secs:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MB of files in the layer")
    parser.add_argument("--changed", type=int, default=12, help="files changed in v2")
    parser.add_argument("--level", type=int, default=3, help="zstd level of the layers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atoll-partial-") as tmp_name:
        tmp = Path(tmp_name)
        files = pick_files(args.size << 20)
        step = max(1, len(files) // args.changed)
        # Changed files spread over the layer, skipping empty ones.
        victims = [f for f in files[::step] if f.stat().st_size > 0][: args.changed]
        changed = {f: changed_content(f.read_bytes(), str(f)) for f in victims}
        layout, tar = write_versions(tmp, files, changed, args.level, "files")
        with tar.open("rb") as src:
            gz_size = len(gzip.compress(src.read(), compresslevel=6))
        floor = len(zstandard.ZstdCompressor(level=19).compress(b"".join(changed.values())))
        per_file = zstandard.ZstdCompressor(level=args.level)
        frames = sum(len(per_file.compress(data)) for data in changed.values())

        with LocalRegistry(tmp / "registry") as registry:
            conf = tmp / "registries.conf"
            conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
            os.environ["CONTAINERS_REGISTRIES_CONF"] = str(conf)
            ctx = SystemContext(environ=dict(os.environ))
            for version in ("1", "2"):
                copy_image(
                    ImageName.parse(f"oci:{layout}:{version}"),
                    ImageName.parse(f"docker://{registry.host}/bench/os:{version}"),
                    src_ctx=ctx,
                )
            v1 = f"docker://{registry.host}/bench/os:1"
            v2 = f"docker://{registry.host}/bench/os:2"
            whole_store = Store.create(tmp / "whole")
            pull(whole_store, v1, ctx, partial=False)
            whole, whole_req, whole_s, _ = pull(whole_store, v2, ctx, partial=False)
            part_store = Store.create(tmp / "partial")
            pull(part_store, v1, ctx, partial=True)
            part, part_req, part_s, meta = pull(part_store, v2, ctx, partial=True)

    rows = [
        ("whole layer (zstd:chunked blob)", whole, whole_req, f"{whole_s:.1f} s"),
        ("whole layer, gzip -6 (reference)", gz_size, 1, "-"),
        ("atoll partial pull", part, part_req, f"{part_s:.1f} s"),
        ("  of which TOC and tar-split", meta, 1, "-"),
        (f"  the changed files' own frames (-{args.level})", frames, "-", "-"),
        ("F_file: zstd -19 of the changed files", floor, "-", "-"),
    ]
    print_table(rows)
    print(f"\npartial / F_file = {part / floor:.3f}   (target <= 1.05)")
    print(f"partial / whole  = {part / whole:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
