"""Benchmark: atoll image copy against skopeo copy, same image, same run.

Builds (once, cached in bench/.cache) a multi-layer OCI image of at least 200 MB
from real files of this machine's /usr, pushes it to a local registry with
skopeo, then times registry→oci: and registry→registry copies by both tools,
alternating, and prints medians, peak memory and the ratios atoll/skopeo.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from atoll.demo.registry import LocalRegistry

CACHE = Path(__file__).resolve().parent / ".cache"
SOURCES = ["/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/lib/python3", "/usr/bin", "/usr/lib"]
POLICY = '{"default":[{"type":"insecureAcceptAnything"}]}'


def build_image(layout: Path, target_bytes: int, layers: int) -> None:
    """Split real files into *layers* gzip layers totalling *target_bytes* raw."""
    if (layout / "index.json").exists():
        return
    tmp = layout.with_name(layout.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    files: list[Path] = []
    total = 0
    seen: set[str] = set()
    for root in SOURCES:
        for dirpath, _dirs, names in os.walk(root):
            for name in sorted(names):
                path = Path(dirpath) / name
                if str(path) in seen or not path.is_file() or path.is_symlink():
                    continue
                seen.add(str(path))
                files.append(path)
                total += path.stat().st_size
                if total >= target_bytes:
                    break
            if total >= target_bytes:
                break
        if total >= target_bytes:
            break
    per_layer = total // layers + 1
    layer_descs, diff_ids = [], []
    chunk: list[Path] = []
    size = 0
    groups: list[list[Path]] = []
    for path in files:
        chunk.append(path)
        size += path.stat().st_size
        if size >= per_layer:
            groups.append(chunk)
            chunk, size = [], 0
    if chunk:
        groups.append(chunk)
    for group in groups:
        raw_path = tmp / "layer.tar"
        with tarfile.open(raw_path, "w") as tar:
            for path in group:
                tar.add(path, arcname=str(path).lstrip("/"), recursive=False)
        diff_ids.append("sha256:" + _sha_file(raw_path))
        gz_path = tmp / "layer.tar.gz"
        with raw_path.open("rb") as src, gzip.open(gz_path, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        digest = _sha_file(gz_path)
        gz_path.rename(tmp / "blobs" / "sha256" / digest)
        raw_path.unlink()
        layer_descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{digest}",
                "size": (tmp / "blobs" / "sha256" / digest).stat().st_size,
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest = _write_blob(tmp, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": layer_descs,
        }
    ).encode()
    manifest_digest = _write_blob(tmp, manifest)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "1"},
                    }
                ],
            }
        )
    )
    tmp.rename(layout)


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a command; return wall seconds and its peak RSS in KiB (from wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{argv[0]} failed: {err.strip()}")
    return seconds, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=240, help="raw image size (default 240)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise SystemExit("skopeo is not installed (apt-get install skopeo)")
    atoll = [sys.executable, "-m", "atoll"]
    layout = CACHE / f"image-{args.size_mb}mb-{args.layers}l"
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"building the test image from /usr files (cached in {layout}) ...", flush=True)
    build_image(layout, args.size_mb << 20, args.layers)
    blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())

    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp_text:
        tmp = Path(tmp_text)
        policy = tmp / "policy.json"
        policy.write_text(POLICY)
        reg_a = LocalRegistry(tmp / "reg-a")
        reg_b = LocalRegistry(tmp / "reg-b")
        with reg_a, reg_b:
            conf = tmp / "registries.conf"
            conf.write_text(
                "".join(
                    f'[[registry]]\nlocation = "{r.host}"\ninsecure = true\n'
                    for r in (reg_a, reg_b)
                )
            )
            env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(conf))
            sk = [skopeo, "--policy", str(policy)]
            sk_tls = ["--src-tls-verify=false", "--dest-tls-verify=false"]
            src = f"docker://{reg_a.host}/bench/src:1"
            subprocess.run(
                [*sk, "copy", "-q", *sk_tls, f"oci:{layout}:1", src], check=True, env=env
            )
            print(
                f"image: {args.layers} layers, {blob_bytes / 2**20:.0f} MiB compressed, "
                f"{args.size_mb} MiB raw; {args.runs} runs each, tools alternating\n",
                flush=True,
            )
            cases = {
                "registry -> oci:": lambda tool, i: f"oci:{tmp}/{tool}-{i}:1",
                "registry -> same registry": lambda tool, i: (
                    f"docker://{reg_a.host}/bench/{tool}-{i}:1"
                ),
                "registry -> other registry": lambda tool, i: (
                    f"docker://{reg_b.host}/bench/{tool}-{i}:1"
                ),
            }
            print(
                f"{'case':28} {'skopeo s':>9} {'atoll s':>9} {'time ratio':>10} "
                f"{'skopeo MiB':>10} {'atoll MiB':>10} {'mem ratio':>9}"
            )
            for case, dest in cases.items():
                times: dict[str, list[float]] = {"skopeo": [], "atoll": []}
                mems: dict[str, list[int]] = {"skopeo": [], "atoll": []}
                for i in range(args.runs):
                    for tool in ("skopeo", "atoll"):
                        target = dest(tool, i)
                        if tool == "skopeo":
                            argv = [*sk, "copy", "-q", *sk_tls, src, target]
                        else:
                            argv = [*atoll, "-q", "image", "copy", src, target]
                        seconds, rss = timed(argv, env)
                        times[tool].append(seconds)
                        mems[tool].append(rss)
                        if target.startswith("oci:"):
                            shutil.rmtree(target[4:].rsplit(":", 1)[0], ignore_errors=True)
                s_t, a_t = statistics.median(times["skopeo"]), statistics.median(times["atoll"])
                s_m, a_m = max(mems["skopeo"]) / 1024, max(mems["atoll"]) / 1024
                print(
                    f"{case:28} {s_t:9.3f} {a_t:9.3f} {a_t / s_t:10.2f} "
                    f"{s_m:10.1f} {a_m:10.1f} {a_m / s_m:9.2f}",
                    flush=True,
                )
    print("\nratios are atoll / skopeo: below 1.00 means atoll is faster or smaller")
    return 0


if __name__ == "__main__":
    sys.exit(main())
