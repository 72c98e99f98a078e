"""Benchmark: atoll's object store against ostree, same trees, same run.

Two trees, each packed as a multi-layer gzip OCI image (cached in bench/.cache):

* a Debian bookworm minbase tree made by debootstrap (about 200 MB; /dev,
  /proc and /sys emptied: no device nodes, which ostree cannot commit);
* a synthetic tree of 50,000 small files.

For each tree, with the page cache warm and the tools alternating:

* import: ``atoll`` (Store.import_image from the oci: layout) against
  ``ostree commit --tree=tar=LAYER ...`` of the same compressed layers into a
  fresh bare repository;
* checkout: atoll's (hardlinks) against ``cp -al`` of the same tree and
  ``ostree checkout -H``; and the incremental checkout to a second version;
* store size after the second version (the first plus a few changed and added
  files) against the first;
* the upgrade: importing the second version (the first's layers plus one) into a
  store that holds the first, with its layer-chain records (only the new layer
  is read) and without them (every layer is read again), as a ratio.

Durability, as each side does it by default, is printed with the results.
Every atoll step runs in its own process (``python deploy_bench.py worker``,
with compiled bytecode), so wall times include interpreter start-up, as
ostree's include its own; atoll's times measured inside the process are
printed too (what a running ``atoll upgrade`` pays).  ``sync`` runs before
every timed step, so no tool pays for another's writeback.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
DEBIAN = CACHE / "debian-bookworm-minbase"
MIRROR = "http://deb.debian.org/debian"
EMPTIED = ("dev", "proc", "sys", "run", "tmp")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


# --- building the inputs --------------------------------------------------------------------


def ensure_debian() -> Path:
    if DEBIAN.is_dir():
        return DEBIAN
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is not installed (apt-get install debootstrap)")
    tmp = DEBIAN.with_name(DEBIAN.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"debootstrap --variant=minbase bookworm {tmp} (once; cached) ...", flush=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(tmp), MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tmp.rename(DEBIAN)
    return DEBIAN


def write_layer(root: Path, paths: list[Path], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            rel = os.path.relpath(path, root)
            if rel == ".":
                continue
            tar.add(path, arcname=rel, recursive=False)


def split_tree(root: Path, groups: list[list[str]]) -> list[list[Path]]:
    """Layer k holds the top-level directories in groups[k]; the last layer
    also holds everything no group names (and the top-level files)."""
    layers: list[list[Path]] = [[] for _ in groups]
    for path in sorted(root.iterdir()):
        top = path.name
        k = next((i for i, g in enumerate(groups) if top in g), len(groups) - 1)
        target = layers[k]
        if path.is_dir() and not path.is_symlink():
            target.append(path)
            if top in EMPTIED:
                continue
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for d in dirnames:
                    target.append(Path(dirpath, d))
                for f in sorted(filenames):
                    target.append(Path(dirpath, f))
        else:
            target.append(path)
    return layers


def build_image(layout: Path, layer_tars: list[Path], created: str) -> None:
    """An OCI layout holding one image (ref "1") with gzip layers."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs, diff_ids = [], []
    for tar in layer_tars:
        diff_ids.append("sha256:" + _sha_file(tar))
        gz = tar.with_suffix(".tar.gz")
        if not gz.exists():
            with (
                tar.open("rb") as src,
                gz.open("wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
        digest = _sha_file(gz)
        os.link(gz, blobs / digest)
        descs.append(
            {"mediaType": OCI_LAYER_GZIP, "digest": f"sha256:{digest}", "size": gz.stat().st_size}
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Labels": {"org.opencontainers.image.version": created[:10]}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    cdigest = hashlib.sha256(config).hexdigest()
    (blobs / cdigest).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{cdigest}",
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    mdigest = hashlib.sha256(manifest).hexdigest()
    (blobs / mdigest).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": f"sha256:{mdigest}",
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def update_layer(out: Path, seed: str, changed: list[str], added: int) -> None:
    """The second version's extra layer: new contents for *changed* paths and
    *added* new files."""
    rng = random.Random(seed)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, name in enumerate([*changed, *(f"opt/update/new-{n}" for n in range(added))]):
            data = rng.randbytes(rng.randint(100, 20000)) + f"{seed}{i}".encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def synthetic_layers(out_dir: Path, files: int, layers: int) -> list[Path]:
    """*files* small files (0-16 KiB) in 2 levels of directories, 1 % symlinks."""
    rng = random.Random(42)
    per_dir = 100
    tars = [out_dir / f"syn-{k}.tar" for k in range(layers)]
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(tarfile.open(t, "w", format=tarfile.PAX_FORMAT)) for t in tars
        ]
        made: set[tuple[int, str]] = set()
        for n in range(files):
            k = n * layers // files
            tar = handles[k]
            d1, d2 = f"d{n // (per_dir * 20):03d}", f"s{(n // per_dir) % 20:02d}"
            for d in (d1, f"{d1}/{d2}"):
                if (k, d) not in made:
                    made.add((k, d))
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tar.addfile(info)
            name = f"{d1}/{d2}/f{n:06d}"
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if n % 100 == 99:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, f"f{n - 1:06d}", 0o777
                tar.addfile(info)
                continue
            data = rng.randbytes(rng.randint(0, 16384))
            info.size, info.mode = len(data), 0o755 if n % 10 == 0 else 0o644
            tar.addfile(info, io.BytesIO(data))
    return tars


def prepare(files: int) -> dict[str, dict[str, Path]]:
    """Build (once) the layouts: {"debian": {"v1": layout, "v2": layout, "tars": ...}}."""
    out: dict[str, dict[str, Path]] = {}
    work = CACHE / "deploy"
    work.mkdir(parents=True, exist_ok=True)
    debian = ensure_debian()
    cases: dict[str, Callable[[Path], list[Path]]] = {}

    def debian_layers(d: Path) -> list[Path]:
        groups = [["usr"], ["var", "etc"], []]
        parts = split_tree(debian, groups)
        tars = []
        for k, paths in enumerate(parts):
            t = d / f"debian-{k}.tar"
            if not t.exists():
                write_layer(debian, paths, t)
            tars.append(t)
        return tars

    def synth_layers(d: Path) -> list[Path]:
        tars = [d / f"syn-{k}.tar" for k in range(2)]
        if not all(t.exists() for t in tars):
            tars = synthetic_layers(d, files, 2)
        return tars

    cases["debian"] = debian_layers
    cases[f"synthetic-{files}"] = synth_layers
    for name, make in cases.items():
        d = work / name
        d.mkdir(exist_ok=True)
        tars = make(d)
        v1, v2 = d / "oci-v1", d / "oci-v2"
        extra = d / "update.tar"
        if not extra.exists():
            sample = _some_files(tars[0], 20)
            update_layer(extra, name, sample, 10)
        if not v1.exists():
            build_image(v1, tars, "2026-01-01T00:00:00Z")
        if not v2.exists():
            build_image(v2, [*tars, extra], "2026-02-01T00:00:00Z")
        out[name] = {"v1": v1, "v2": v2, "dir": d}
    return out


def _some_files(tar_path: Path, n: int) -> list[str]:
    with tarfile.open(tar_path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile() and m.size > 0]
    return names[:: max(1, len(names) // n)][:n]


# --- the atoll side (run in a worker process) ---------------------------------------------


def worker(argv: list[str]) -> None:
    from atoll.oci.context import SystemContext
    from atoll.oci.digest import Digest
    from atoll.oci.manifest import ImageManifest, parse_manifest
    from atoll.oci.transports import ImageName
    from atoll.oci.transports.layout import LayoutSource
    from atoll.store import Store

    action = argv[0]
    if action == "import":
        store_path, layout = Path(argv[1]), Path(argv[2])
        store = Store.create(store_path)
        name = f"oci:{layout}:1"
        with LayoutSource(ImageName.parse(name), SystemContext()) as source:
            raw, declared = source.get_manifest(None)
            manifest = parse_manifest(raw, declared, where=name)
            assert isinstance(manifest, ImageManifest)
            with source.open_blob(manifest.config) as chunks:
                config = b"".join(chunks)
            result = store.import_image(
                source,
                manifest,
                config,
                image=name,
                manifest_digest=Digest.of(raw),
                ref=argv[3] if len(argv) > 3 else None,
            )
        print(json.dumps(result.to_json()))
    elif action == "checkout":
        store = Store.open(Path(argv[1]))
        commit = store.ref(argv[2])
        assert commit is not None
        dest = Path(argv[3])
        reuse = None
        if len(argv) > 4:
            old = store.ref(argv[5])
            assert old is not None
            reuse = (Path(argv[4]), old)
        sync = os.environ.get("BENCH_NO_SYNC") != "1"
        stats = store.checkout(commit, dest, copy_paths=(), reuse=reuse, sync=sync)
        print(json.dumps(stats.to_json()))
    else:
        raise SystemExit(f"unknown worker action {action}")


# --- measuring ------------------------------------------------------------------------------


def timed(argv: list[str], extra_env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a command; wall seconds, peak RSS (KiB, from wait4) and stdout.

    Dirty pages of earlier steps are written out first (not timed), so no tool
    pays for another's writeback in its own sync."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**WORKER_ENV, **(extra_env or {})},
    )
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(argv[:4])} failed: {err.strip()[-2000:]}")
    return seconds, usage.ru_maxrss, out


WORKER = [sys.executable, str(Path(__file__).resolve()), "worker"]
#: Workers use compiled bytecode, as an installed atoll would.
WORKER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def count_entries(root: Path) -> int:
    n = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        n += len(dirnames) + len(filenames)
    return n


def disk_usage(root: Path) -> int:
    """Bytes allocated to the files under *root*, each inode counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = Path(dirpath, name).lstat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def rm(path: Path) -> None:
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", str(path)], check=True)


def ostree_commit(repo: Path, branch: str, layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_bytes())
    trees = [
        f"--tree=tar={layout / 'blobs' / 'sha256' / d['digest'].split(':')[1]}"
        for d in manifest["layers"]
    ]
    return [
        "ostree",
        f"--repo={repo}",
        "commit",
        f"--branch={branch}",
        "--tar-autocreate-parents",
        "--no-bindings",
        *trees,
    ]


def _checkout_times(
    store: Path, repo: Path, reference: Path, tmp: Path, runs: int
) -> dict[str, list[float]]:
    """Seconds per checkout of v1, tools taking turns at going first.  For atoll
    the time Store.checkout reports inside its process (tree reading included)
    and the process's wall time, with its final syncfs and without."""
    times: dict[str, list[float]] = {
        "atoll": [],
        "atoll (in process)": [],
        "atoll no syncfs": [],
        "atoll no syncfs (in process)": [],
        "cp -al": [],
        "cp -al + syncfs": [],
        "ostree checkout -H": [],
    }
    tools = ["atoll", "atoll no syncfs", "cp -al", "cp -al + syncfs", "ostree checkout -H"]
    for i in range(runs):
        for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
            dest = tmp / f"co-{i}"
            if tool.startswith("atoll"):
                env = {"BENCH_NO_SYNC": "1"} if "no syncfs" in tool else None
                argv = [*WORKER, "checkout", str(store), "v1", str(dest)]
                seconds, _, out = timed(argv, env)
                times[f"{tool} (in process)"].append(json.loads(out)["elapsed"])
            elif tool == "cp -al":
                seconds, _, _ = timed(["cp", "-al", str(reference), str(dest)])
            elif tool == "cp -al + syncfs":
                os.sync()
                start = time.perf_counter()
                subprocess.run(["cp", "-al", str(reference), str(dest)], check=True)
                subprocess.run(["sync", "-f", str(dest)], check=True)
                seconds = time.perf_counter() - start
            else:
                argv = ["ostree", f"--repo={repo}", "checkout", "-H", "v1", str(dest)]
                seconds, _, _ = timed(argv)
            times[tool].append(seconds)
            rm(dest)
    return times


def _upgrade_times(store: Path, v2: Path, tmp: Path, runs: int) -> None:
    """Import v2 into copies of a store holding v1 (``cp -al``: an import only
    adds objects and replaces state files by rename, so the copies share
    nothing an import changes), with the layer-chain records and without."""
    times: dict[str, list[float]] = {"with records": [], "without records": []}
    inner: dict[str, list[float]] = {"with records": [], "without records": []}
    reused = 0
    for i in range(runs):
        for case in list(times)[:: 1 if i % 2 == 0 else -1]:
            copy = tmp / "store-upgrade"
            subprocess.run(["cp", "-al", str(store), str(copy)], check=True)
            if case == "without records":
                for record in (copy / "state" / "chains").iterdir():
                    record.unlink()
            seconds, _, out = timed([*WORKER, "import", str(copy), str(v2), "v2"])
            stats = json.loads(out)
            if case == "with records":
                reused = stats["layersReused"]
            else:
                assert stats["layersReused"] == 0, stats
            times[case].append(seconds)
            inner[case].append(stats["elapsed"])
            rm(copy)
    med = {case: statistics.median(t) for case, t in times.items()}
    med_in = {case: statistics.median(t) for case, t in inner.items()}
    print(
        f"upgrade   v2 import into a store holding v1 ({reused} of v2's layers reused), median:\n"
        f"          with records    {med['with records']:7.3f} s "
        f"({med_in['with records']:.3f} s in process)\n"
        f"          without records {med['without records']:7.3f} s "
        f"({med_in['without records']:.3f} s in process)\n"
        f"          without / with: {med['without records'] / med['with records']:.1f} "
        f"({med_in['without records'] / med_in['with records']:.1f} in process)"
    )


def run_case(name: str, paths: dict[str, Path], tmp: Path, runs: int) -> None:
    v1, v2 = paths["v1"], paths["v2"]
    print(f"\n== {name}", flush=True)
    imports: dict[str, list[float]] = {"atoll": [], "ostree": []}
    rss: list[int] = []
    inner: list[float] = []
    store, repo = tmp / "store", tmp / "repo"
    for i in range(runs):
        for tool in ("ostree", "atoll") if i % 2 else ("atoll", "ostree"):
            if tool == "atoll":
                rm(store)
                seconds, kib, out = timed([*WORKER, "import", str(store), str(v1), "v1"])
                rss.append(kib)
                inner.append(json.loads(out)["elapsed"])
            else:
                rm(repo)
                subprocess.run(["ostree", f"--repo={repo}", "init", "--mode=bare"], check=True)
                seconds, _, _ = timed(ostree_commit(repo, "v1", v1))
            imports[tool].append(seconds)
    reference = tmp / "reference"
    subprocess.run(["ostree", f"--repo={repo}", "checkout", "-H", "v1", str(reference)], check=True)
    entries = count_entries(reference)
    files = sum(len(f) for _d, _s, f in os.walk(reference))
    print(
        f"tree: {entries} entries, {files} of them files and symlinks; {runs} imports and "
        f"{max(runs, 7)} checkouts per tool, page cache warm; median / best of the runs"
    )
    med = {tool: statistics.median(t) for tool, t in imports.items()}
    best = {tool: min(t) for tool, t in imports.items()}
    print(
        f"import    atoll          {med['atoll']:7.3f} / {best['atoll']:7.3f} s  "
        f"{files / med['atoll']:7.0f} files/s  ({statistics.median(inner):.3f} s in process; "
        f"peak RSS {max(rss) / 1024:.0f} MiB)\n"
        f"          ostree commit  {med['ostree']:7.3f} / {best['ostree']:7.3f} s  "
        f"{files / med['ostree']:7.0f} files/s\n"
        f"          atoll / ostree time: {med['atoll'] / med['ostree']:.2f} / "
        f"{best['atoll'] / best['ostree']:.2f}"
    )
    times = _checkout_times(store, repo, reference, tmp, max(runs, 7))
    med = {tool: statistics.median(t) for tool, t in times.items()}
    best = {tool: min(t) for tool, t in times.items()}
    for tool in times:
        print(
            f"checkout  {tool:29} {med[tool]:6.3f} / {best[tool]:6.3f} s  "
            f"{entries / med[tool]:7.0f} entries/s"
        )
    share = {
        "same durability (atoll; cp -al + syncfs)": ("atoll (in process)", "cp -al + syncfs"),
        "neither syncs (atoll sync=False; cp -al)": ("atoll no syncfs (in process)", "cp -al"),
        "atoll's default against plain cp -al": ("atoll (in process)", "cp -al"),
        "with start-up (atoll process; cp -al)": ("atoll", "cp -al"),
    }
    print("          atoll files/s as a share of cp -al's, median / best:")
    for label, (mine, theirs) in share.items():
        print(
            f"            {label:42} {med[theirs] / med[mine]:.2f} / "
            f"{best[theirs] / best[mine]:.2f}"
        )
    # The second version: import, store size, incremental checkout.
    _upgrade_times(store, v2, tmp, runs)
    size1, osize1 = disk_usage(store / "objects"), disk_usage(repo / "objects")
    seconds, _, out = timed([*WORKER, "import", str(store), str(v2), "v2"])
    stats = json.loads(out)
    subprocess.run(ostree_commit(repo, "v2", v2), check=True, stdout=subprocess.DEVNULL)
    size2, osize2 = disk_usage(store / "objects"), disk_usage(repo / "objects")
    mib = 2**20
    print(
        f"version 2 import {seconds:.3f} s: {stats['filesNew']} of {stats['filesTotal']} files "
        f"new\nstore size  atoll  v1 {size1 / mib:7.1f} MiB, v1+v2 {size2 / mib:7.1f} MiB "
        f"(+{(size2 - size1) / mib:.2f} MiB)\n"
        f"            ostree v1 {osize1 / mib:7.1f} MiB, v1+v2 {osize2 / mib:7.1f} MiB "
        f"(+{(osize2 - osize1) / mib:.2f} MiB)"
    )
    incremental, fresh = [], []
    for i in range(runs):
        old, dest = tmp / f"old-{i}", tmp / f"new-{i}"
        timed([*WORKER, "checkout", str(store), "v1", str(old)])
        _, _, out = timed([*WORKER, "checkout", str(store), "v2", str(dest), str(old), "v1"])
        placed = json.loads(out)["files"]
        incremental.append(json.loads(out)["elapsed"])
        rm(dest)
        _, _, out = timed([*WORKER, "checkout", str(store), "v2", str(dest)])
        fresh.append(json.loads(out)["elapsed"])
        rm(dest)
    print(
        f"checkout  v1 -> v2 incremental {statistics.median(incremental):.3f} s in process, "
        f"{placed} files placed (fresh: {statistics.median(fresh):.3f} s)"
    )
    for path in (reference, store, repo):
        rm(path)


DURABILITY = """
durability, as each side does it:
  atoll import   objects written to a staging directory without fsync; syncfs; renamed
                 into objects/; syncfs; commit renamed and its directory fsynced; ref
                 written with fsync of file and directory
  ostree commit  objects written to a staging directory without fsync; syncfs; renamed
                 into objects/; ref written with fsync (ostree 2022.7 defaults)
  atoll checkout one syncfs of the destination's file system at the end (the default);
                 "no syncfs" is checkout(sync=False), for callers that sync themselves
  cp -al         none (cp -al+syncfs adds `sync -f DEST`)
  ostree -H      none (ostree checkout's --fsync defaults to off)
"""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
        return 0
    # Interrupted or killed: still remove the work directory (via SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=50_000, help="synthetic tree size")
    parser.add_argument("--only", choices=["debian", "synthetic"], help="run one case")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: both stores keep real owners (ostree bare mode)")
    if shutil.which("ostree") is None:
        raise SystemExit("ostree is not installed (apt-get install ostree)")
    print("preparing images (cached in bench/.cache/deploy) ...", flush=True)
    cases = prepare(args.files)
    with tempfile.TemporaryDirectory(prefix="atoll-deploy-bench-", dir=CACHE) as tmp_text:
        for name, paths in cases.items():
            if args.only and not name.startswith(args.only):
                continue
            run_case(name, paths, Path(tmp_text), args.runs)
    print(DURABILITY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
