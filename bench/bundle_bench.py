"""Benchmark: the size of an offline bundle for an update where a few big files
change by a little, whole and made ``--delta-from`` the version the device runs.

The two versions are those of bench/delta (real files of this machine's /usr
in one zstd:chunked layer; v2 rewrites a version string in the largest
files), in a local Distribution registry.  Printed, all measured in this run:

* full bundle: ``atoll bundle create`` of v2 (what a device with nothing needs);
* layers v1 lacks: the v2 layer blobs v1 does not have (what a bundle of whole
  layers carries at the least);
* ``--delta-from`` bundle: ``atoll bundle create v2 --delta-from v1``;
* W_delta: what a device running v1 moves upgrading from the registry with
  the published delta (the bytes the bundle stands in for).

Ratios: delta bundle / full bundle, delta bundle / W_delta (the bundle's own
overhead: its manifests, signatures and tar headers).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from delta_bench import parse_args, served, versions
from partial_bench import print_table, pull

from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, open_source
from atoll.pipeline.bundlecreate import create_bundle
from atoll.pipeline.deltacreate import create_delta
from atoll.store import Store
from atoll.sysroot.fetch import import_remote


def layer_bytes(name: str, ctx: SystemContext) -> dict[str, int]:
    with open_source(ImageName.parse(name), ctx) as source:
        layers = json.loads(source.get_manifest()[0])["layers"]
    return {layer["digest"]: layer["size"] for layer in layers}


def main() -> int:
    args = parse_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="atoll-bundle-") as tmp_name:
        tmp = Path(tmp_name)
        layout, _ = versions(tmp, args)
        with served(tmp, layout) as (ctx, docker_repo):
            repo = docker_repo.removeprefix("docker://")
            v1, v2 = ImageReference.parse(f"{repo}:1"), ImageReference.parse(f"{repo}:2")
            old_layers = layer_bytes(f"docker://{v1}", ctx)
            lacking = sum(
                size
                for digest, size in layer_bytes(f"docker://{v2}", ctx).items()
                if digest not in old_layers
            )
            started = time.monotonic()
            full = create_bundle(v2, tmp / "full.bundle", ctx=ctx).size
            full_s = time.monotonic() - started
            started = time.monotonic()
            delta = create_bundle(v2, tmp / "delta.bundle", ctx=ctx, from_image=v1).size
            delta_s = time.monotonic() - started
            summary = create_delta(
                ImageName.parse(f"docker://{v1}"),
                ImageName.parse(f"docker://{v2}"),
                ImageName.parse(f"docker://{repo}"),
                ctx,
            )
            store = Store.create(tmp / "store")
            pull(store, f"docker://{v1}", ctx, partial=True)
            _, report = import_remote(
                store, ImageName.parse(f"docker://{v2}"), ctx, delta_from=summary.old
            )
            w_delta = report.bytes_moved

    rows: list[tuple[str, int, object, str]] = [
        ("full bundle", full, "-", f"{full_s:.1f} s"),
        ("layers v1 lacks (whole-layer floor)", lacking, "-", "-"),
        ("--delta-from bundle", delta, "-", f"{delta_s:.1f} s"),
        ("W_delta: registry upgrade with the delta", w_delta, "-", "-"),
    ]
    print_table(rows, 42)
    print(f"\ndelta bundle / full bundle     = {delta / full:.4f}")
    print(f"delta bundle / layers v1 lacks = {delta / lacking:.4f}")
    print(f"delta bundle / W_delta         = {delta / w_delta:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
