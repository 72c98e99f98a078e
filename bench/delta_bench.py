"""Benchmark: bytes a device moves for an update where a few big files change by
a little (rebuilt binaries, a version bump), by path, in the same run.

Builds v1 of a tree from real files of this machine's /usr (one zstd:chunked
layer of about ``--size`` MB, as bench/partial does) and v2 where the
``--changed`` largest files get a version string rewritten every ``--spread``
bytes and a few bytes inserted (so everything after moves, as in a relinked binary).
Both go to a local Distribution registry, ``atoll delta create`` publishes the
delta, and stores that hold v1 import v2:

* whole: the v2 layer blob (a layer pull);
* ranges: atoll's file-level pull without a delta;
* delta: atoll's pull with the delta (its index, payload ranges, other ranges);
* F_file: zstd -19 of the changed files as one stream;
* F_delta: sum over the changed files of min(bsdiff, zstd --patch-from -19),
  both made by the real tools (Debian's bsdiff 4.3, zstd CLI).

Prints bytes and W_delta / F_delta (target <= 1.1), W_delta / whole (<= 1.01).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import zstandard
from partial_bench import pick_files, print_table, pull, write_versions

from atoll.demo.registry import LocalRegistry
from atoll.oci.context import SystemContext
from atoll.oci.imagecopy import copy_image
from atoll.oci.transports import ImageName
from atoll.pipeline.deltacreate import create_delta
from atoll.run import run
from atoll.store import Store
from atoll.sysroot.fetch import import_remote


def bumped(data: bytes, version: str, spread: int) -> bytes:
    """*data* rebuilt: a version string rewritten every *spread* bytes (as
    relinking moves addresses), 7 bytes inserted."""
    out = bytearray(data)
    tag = f"v{version}".encode()
    for at in range(spread // 2, len(out) - len(tag), spread):
        out[at : at + len(tag)] = tag
    mid = len(out) // 3
    return bytes(out[:mid]) + b"patched" + bytes(out[mid:])


def floor_delta(tmp: Path, old: bytes, new: bytes) -> tuple[int, int]:
    """(bsdiff, zstd --patch-from -19) sizes for one file, by the real tools."""
    a, b, p = tmp / "old", tmp / "new", tmp / "patch"
    a.write_bytes(old)
    b.write_bytes(new)
    run(["bsdiff", a, b, p])
    bsdiff = p.stat().st_size
    run(["zstd", "-q", "-f", "-19", "--long=27", f"--patch-from={a}", b, "-o", p])
    return bsdiff, p.stat().st_size


def parse_args(doc: str) -> argparse.Namespace:
    """The options of the two versions (also bench/bundle's)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="MB of files in the layer")
    parser.add_argument("--changed", type=int, default=6, help="big files changed in v2")
    parser.add_argument("--level", type=int, default=3, help="zstd level of the layers")
    parser.add_argument(
        "--spread", type=int, default=8192, help="bytes between two edits of a changed file"
    )
    return parser.parse_args()


def versions(tmp: Path, args: argparse.Namespace) -> tuple[Path, dict[Path, bytes]]:
    """The layout with tags 1 and 2 (v2: the largest files bumped), and the changes."""
    files = pick_files(args.size << 20)
    victims = sorted(files, key=lambda f: f.stat().st_size, reverse=True)[: args.changed]
    changed = {f: bumped(f.read_bytes(), "2", args.spread) for f in victims}
    layout, _ = write_versions(tmp, files, changed, args.level, "of the largest files")
    return layout, changed


@contextlib.contextmanager
def served(tmp: Path, layout: Path) -> Iterator[tuple[SystemContext, str]]:
    """Tags 1 and 2 of *layout* in a local registry: its context and ``docker://HOST/bench/os``."""
    with LocalRegistry(tmp / "registry") as registry:
        conf = tmp / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        os.environ["CONTAINERS_REGISTRIES_CONF"] = str(conf)
        ctx = SystemContext(environ=dict(os.environ))
        repo = f"docker://{registry.host}/bench/os"
        for version in ("1", "2"):
            copy_image(
                ImageName.parse(f"oci:{layout}:{version}"),
                ImageName.parse(f"{repo}:{version}"),
                src_ctx=ctx,
            )
        yield ctx, repo


def main() -> int:
    args = parse_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="atoll-delta-") as tmp_name:
        tmp = Path(tmp_name)
        layout, changed = versions(tmp, args)
        f_file = len(zstandard.ZstdCompressor(level=19).compress(b"".join(changed.values())))
        bsdiff = patch_from = f_delta = 0
        for path, new in changed.items():
            b, z = floor_delta(tmp, path.read_bytes(), new)
            bsdiff, patch_from, f_delta = bsdiff + b, patch_from + z, f_delta + min(b, z)

        with served(tmp, layout) as (ctx, repo):
            v1, v2 = f"{repo}:1", f"{repo}:2"
            started = time.monotonic()
            summary = create_delta(
                ImageName.parse(v1), ImageName.parse(v2), ImageName.parse(repo), ctx
            )
            create_s = time.monotonic() - started
            whole_store = Store.create(tmp / "whole")
            pull(whole_store, v1, ctx, partial=False)
            whole, _, whole_s, _ = pull(whole_store, v2, ctx, partial=False)
            part_store = Store.create(tmp / "partial")
            pull(part_store, v1, ctx, partial=True)
            ranges, ranges_req, ranges_s, _ = pull(part_store, v2, ctx, partial=True)
            delta_store = Store.create(tmp / "delta")
            pull(delta_store, v1, ctx, partial=True)
            started = time.monotonic()
            _, report = import_remote(delta_store, ImageName.parse(v2), ctx, delta_from=summary.old)
            delta_s = time.monotonic() - started
            delta, delta_req = report.bytes_moved, report.to_json()["requests"]
            by_delta = report.totals()["delta"]
            meta = sum(r.metadata_bytes for r in report.layers)

    print(f"delta created in {create_s:.1f} s: {summary.files} files, {summary.patched} patched")
    rows: list[tuple[str, int, object, str]] = [
        ("whole layer (zstd:chunked blob)", whole, 1, f"{whole_s:.1f} s"),
        ("atoll ranges (no delta)", ranges, ranges_req, f"{ranges_s:.1f} s"),
        ("atoll delta", delta, delta_req, f"{delta_s:.1f} s"),
        ("  of which the delta path", by_delta["bytes"], by_delta["requests"], "-"),
        ("  of which TOC and tar-split", meta, 1, "-"),
        ("F_file: zstd -19 of the changed files", f_file, "-", "-"),
        ("bsdiff, sum over changed files", bsdiff, "-", "-"),
        ("zstd --patch-from -19, sum", patch_from, "-", "-"),
        ("F_delta: sum of min(bsdiff, patch-from)", f_delta, "-", "-"),
    ]
    print_table(rows, 42)
    print(f"\nW_delta / F_delta = {delta / f_delta:.3f}   (target <= 1.1)")
    print(f"W_delta / whole   = {delta / whole:.4f}  (never above 1.01)")
    print(f"W_delta / ranges  = {delta / ranges:.4f}")
    # The layer's TOC and tar-split rebuild its tar: no floor counts them.
    print(f"(W_delta - TOC and tar-split) / F_delta = {(delta - meta) / f_delta:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
