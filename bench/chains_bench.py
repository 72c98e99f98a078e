"""Benchmark: how the object store grows with the number of layers.

An image of N layers, each adding one small file, is imported into an empty
store for each N given; printed per N: the store's disk usage, the bytes of
its tree objects and layer-chain records, the number of records, and the time
of the import.  Growth should be linear: the ratios to the first N are printed
beside the layer ratios.

    bench/chains --layers 1000 2000 3000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from deploy_bench import build_image, worker


def build(layout: Path, layers: int) -> None:
    """An image (ref "1") of *layers* layers of one small file each."""
    tars = layout.with_name(layout.name + "-tars")
    tars.mkdir()
    paths = []
    for i in range(layers):
        path = tars / f"{i:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            data = f"layer {i}\n".encode()
            info = tarfile.TarInfo(f"file-{i:05d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    build_image(layout, paths, "2026-01-01T00:00:00Z")


def measure(store_path: Path) -> dict[str, int]:
    du = trees = records = count = 0
    for dirpath, _, files in os.walk(store_path):
        for name in files:
            st = (Path(dirpath) / name).lstat()
            du += st.st_blocks * 512
            if name.endswith(".tree"):
                trees += st.st_size
            elif Path(dirpath).name == "chains":
                records += st.st_size
                count += 1
    return {"du": du, "tree_bytes": trees, "record_bytes": records, "records": count}


def run(layers: int, work: Path) -> dict[str, float]:
    layout = work / f"img-{layers}"
    build(layout, layers)
    store = work / f"store-{layers}"
    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        worker(["import", str(store), str(layout)])
    elapsed = time.monotonic() - start
    return {"layers": layers, "seconds": round(elapsed, 2), **measure(store)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1000, 2000, 3000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atoll-chains-bench-") as tmp:
        rows = [run(n, Path(tmp)) for n in args.layers]
    first = rows[0]
    for row in rows:
        ratio = row["layers"] / first["layers"]
        print(
            f"{row['layers']:6d} layers: store {row['du'] / 1e6:7.1f} MB "
            f"(x{row['du'] / first['du']:.2f} for x{ratio:.1f} layers), "
            f"trees {row['tree_bytes'] / 1e6:7.2f} MB, records {row['records']} "
            f"({row['record_bytes'] / 1e3:.0f} kB), import {row['seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
