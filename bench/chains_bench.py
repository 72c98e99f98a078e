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
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import ImageManifest, parse_manifest
from atoll.oci.transports import ImageName
from atoll.oci.transports.layout import LayoutSource
from atoll.store import Store


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def build(layout: Path, layers: int) -> None:
    (layout / "blobs/sha256").mkdir(parents=True)
    descs, diff_ids = [], []
    for i in range(layers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data = f"layer {i}\n".encode()
            info = tarfile.TarInfo(f"file-{i:05d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar_bytes = raw.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
        digest, size = _blob(layout, gzip.compress(tar_bytes, mtime=0))
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }
        )
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    cdigest, csize = _blob(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdigest,
                "size": csize,
            },
            "layers": descs,
        }
    ).encode()
    mdigest, msize = _blob(layout, manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": msize,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


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
    store = Store.create(work / f"store-{layers}")
    name = f"oci:{layout}:latest"
    with LayoutSource(ImageName.parse(name), SystemContext()) as source:
        raw, declared = source.get_manifest(None)
        manifest = parse_manifest(raw, declared, where=name)
        assert isinstance(manifest, ImageManifest)
        with source.open_blob(manifest.config) as chunks:
            config_raw = b"".join(chunks)
        start = time.monotonic()
        store.import_image(source, manifest, config_raw, image=name, manifest_digest=Digest.of(raw))
    elapsed = time.monotonic() - start
    return {"layers": layers, "seconds": round(elapsed, 2), **measure(store.path)}


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
