"""Benchmark: the bytes W a device moves to go from one OS tree to the next.

Corpora (bench/transfer_corpora.py, made from Debian's mirror and cached):

    security update   bookworm (point release) -> + bookworm-security/-updates upgrades
    one package       bookworm -> bookworm + one package
    no-op rebuild     bookworm -> the same tree rebuilt a day later
    major upgrade     bookworm -> trixie (both minbase)

For each pair (A on the device, B published), in the same run:

    single layer   today's layer pull: B as one gzip layer (all of it unless identical)
    rechunked      atoll rechunk of A, and of B with --previous A: the layers of B
                   whose digests A lacks (SOURCE_DATE_EPOCH fixed, as a
                   reproducible pipeline sets it)
    partial        file-level partial pull: A and B rechunked as zstd:chunked, pushed to a
                   loopback registry, a store holding A imports B (transfer report + manifest)
    delta          `atoll delta create A B` published, then the same import using it
    ostree objects the real ostree CLI: `ostree pull` of B's objects into a repo holding A,
                   from an archive repo served over HTTP on loopback (bytes counted
                   by the server)
    ostree delta   `ostree static-delta generate` A->B, then the same pull
    F_file         zstd -19 of the files of B whose content A lacks, as one stream
    F_delta        per changed file (same path) the smaller of bsdiff and
                   zstd -19 --patch-from=OLD, plus zstd -19 of new files as one stream
    full           B as one gzip layer, and B rechunked (all its layers)

Then, unless --rates is empty, the time to apply partial, delta and both ostree
paths through a link of each rate (bench/transfer_apply.py, bench/rateproxy.py).

The trees are packed as the image build would (atoll.demo.osimage.tree_entries:
sorted, numeric owners, no device nodes, /dev /proc /sys /run /tmp emptied);
ostree commits the same tar.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from transfer_apply import ApplyTimes, atoll_apply, ostree_apply, print_apply  # noqa: E402
from transfer_corpora import ensure_corpora  # noqa: E402

from atoll.build.layerwrite import ENCODERS  # noqa: E402
from atoll.build.rechunk import RechunkOptions, rechunk_image  # noqa: E402
from atoll.demo.osimage import tree_entries, write_layer  # noqa: E402
from atoll.demo.registry import LocalRegistry  # noqa: E402
from atoll.oci.context import SystemContext  # noqa: E402
from atoll.oci.digest import Digest  # noqa: E402
from atoll.oci.imagecopy import copy_image  # noqa: E402
from atoll.oci.transports import ImageName  # noqa: E402
from atoll.pipeline.deltacreate import create_delta  # noqa: E402
from atoll.store import Store  # noqa: E402
from atoll.sysroot.fetch import import_remote  # noqa: E402


@dataclass
class Dirs:
    #: The corpora and packed images (--cache), and where each run's files go (--work).
    cache: Path = HERE / ".cache" / "transfer"
    work: Path | None = None


DIRS = Dirs()
EPOCH = 1_735_689_600  # 2025-01-01: SOURCE_DATE_EPOCH of both builds
SCENARIOS = (
    ("security update", "bookworm", "bookworm-security"),
    ("one package", "bookworm", "bookworm-plus-one"),
    ("no-op rebuild", "bookworm", "bookworm-rebuilt"),
    ("major upgrade", "bookworm", "trixie"),
)


@dataclass
class Row:
    name: str
    values: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    apply: ApplyTimes | None = None


# --- atoll's partial pull and delta --------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A and B rechunked as zstd:chunked (B with --previous A), pushed to a loopback registry."""

    old: ImageName
    new: ImageName
    repo: ImageName
    ctx: SystemContext
    #: Bytes of B's manifest and config: fetched on every path, counted as the
    #: rechunked column counts them (the transfer report covers layers only).
    meta: int


def _manifest_and_config(layout: Path) -> int:
    index = json.loads((layout / "index.json").read_text())
    manifest = index["manifests"][0]
    blob = layout / "blobs" / "sha256" / manifest["digest"].removeprefix("sha256:")
    return int(manifest["size"]) + int(json.loads(blob.read_bytes())["config"]["size"])


def publish_chunked(old: Packed, new: Packed, work: Path, registry: LocalRegistry) -> Published:
    conf = work / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    ctx = SystemContext(
        tmpdir=work, environ={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
    )
    options = RechunkOptions(epoch=EPOCH, encoder=ENCODERS["zstd:chunked"])
    out_a = ImageName.parse(f"oci:{work}/zchunked-a:latest")
    out_b = ImageName.parse(f"oci:{work}/zchunked-b:latest")
    rechunk_image(ImageName.parse(f"oci:{old.layout}:latest"), out_a, ctx, options)
    rechunk_image(
        ImageName.parse(f"oci:{new.layout}:latest"),
        out_b,
        ctx,
        replace(options, previous=out_a),
    )
    repo = f"docker://{registry.host}/bench/os"
    for src, tag in ((out_a, "1"), (out_b, "2")):
        copy_image(src, ImageName.parse(f"{repo}:{tag}"), src_ctx=ctx)
    return Published(
        ImageName.parse(f"{repo}:1"),
        ImageName.parse(f"{repo}:2"),
        ImageName.parse(repo),
        ctx,
        _manifest_and_config(work / "zchunked-b"),
    )


def partial_bytes(pub: Published, work: Path) -> tuple[int, dict[str, Any]]:
    """File-level partial pull of B onto a store holding A: bytes moved, and the
    transfer report's path totals."""
    store = Store.create(work / "store-partial")
    import_remote(store, pub.old, pub.ctx, partial=True)
    _, report = import_remote(store, pub.new, pub.ctx, partial=True)
    return report.bytes_moved + pub.meta, report.totals()


def delta_bytes(pub: Published, work: Path) -> tuple[int, dict[str, Any], str, Digest]:
    """`atoll delta create A B` published, then the same pull using it (and A's
    digest, to look the delta up from)."""
    started = time.monotonic()
    summary = create_delta(pub.old, pub.new, pub.repo, pub.ctx)
    made = (
        f"delta: {summary.files} files, {summary.patched} patched, payload "
        f"{summary.payload} B, created in {time.monotonic() - started:.0f} s"
    )
    store = Store.create(work / "store-delta")
    import_remote(store, pub.old, pub.ctx, partial=True)
    _, report = import_remote(store, pub.new, pub.ctx, partial=True, delta_from=summary.old)
    return report.bytes_moved + pub.meta, report.totals(), made, summary.old


# --- images --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    layout: Path
    layer: Path
    size: int
    digest: str


def pack(tree: Path, name: str, created: str) -> Packed:
    """The tree as a one-layer gzip OCI image at CACHE/images/NAME (cached)."""
    layout = DIRS.cache / "images" / name
    meta = layout / "packed.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        # The layer by its digest under this layout: the cache may have been moved.
        layer = layout / "blobs" / "sha256" / data["digest"].removeprefix("sha256:")
        return Packed(layout, layer, data["size"], data["digest"])
    shutil.rmtree(layout, ignore_errors=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = layout / "layer.tmp"
    with tmp.open("wb") as out:
        blob = write_layer(out, tree_entries(tree))
    layer = blobs / blob.digest.removeprefix("sha256:")
    tmp.rename(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Labels": {"containers.bootc": "1"}, "Cmd": ["/sbin/init"]},
            "rootfs": {"type": "layers", "diff_ids": [blob.diff_id]},
            "history": [{"created_by": f"bench tree {name}"}],
        },
        sort_keys=True,
    ).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    (blobs / config_digest).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config_digest}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob.digest,
                    "size": blob.size,
                }
            ],
        }
    ).encode()
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_digest).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    meta.write_text(json.dumps({"layer": str(layer), "size": blob.size, "digest": blob.digest}))
    return Packed(layout, layer, blob.size, blob.digest)


def rechunked_layers(old: Packed, new: Packed, work: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Layers (digest -> size) of A rechunked, and of B rechunked with --previous A."""
    ctx = SystemContext(tmpdir=work)
    out_a = ImageName.parse(f"oci:{work}/chunked-a:latest")
    out_b = ImageName.parse(f"oci:{work}/chunked-b:latest")
    a = rechunk_image(
        ImageName.parse(f"oci:{old.layout}:latest"), out_a, ctx, RechunkOptions(epoch=EPOCH)
    )
    b = rechunk_image(
        ImageName.parse(f"oci:{new.layout}:latest"),
        out_b,
        ctx,
        RechunkOptions(epoch=EPOCH, previous=out_a),
    )
    # B's manifest and config are fetched too: count them as a layer the device lacks.
    layout = work / "chunked-b"
    index = json.loads((layout / "index.json").read_text())
    manifest_size = index["manifests"][0]["size"]
    blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].removeprefix("sha256:")
    config_size = json.loads(blob.read_bytes())["config"]["size"]
    b_layers = {str(x.digest): x.size for x in b.layers}
    b_layers["manifest+config"] = manifest_size + config_size
    return ({str(x.digest): x.size for x in a.layers}, b_layers)


# --- ostree --------------------------------------------------------------------------------


class _Counting(http.server.SimpleHTTPRequestHandler):
    sent = 0
    requests = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = source.read()
        with _Counting.lock:
            _Counting.sent += len(data)
            _Counting.requests += 1
        outputfile.write(data)


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = lambda *a, **kw: _Counting(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _ostree(*args: str) -> str:
    proc = subprocess.run(["ostree", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ostree {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def ostree_bytes(
    old: Packed,
    new: Packed,
    work: Path,
    timer: Callable[[str, Path, dict[str, int | None]], None] | None = None,
) -> tuple[int, int]:
    """Bytes served for `ostree pull` of B's objects, and for a static-delta pull;
    then *timer* (the server's URL, a client repo holding A, those bytes) while
    it still serves."""
    repo = work / "ostree-server"
    _ostree("init", f"--repo={repo}", "--mode=archive")
    _ostree(
        "commit",
        f"--repo={repo}",
        "--branch=os",
        "--tar-autocreate-parents",
        f"--tree=tar={old.layer}",
        "--no-xattrs",
    )
    _ostree("summary", "-u", f"--repo={repo}")
    server, url = _serve(repo)
    try:
        clients = {}
        for kind in ("objects", "delta"):
            client = work / f"ostree-{kind}"
            _ostree("init", f"--repo={client}", "--mode=bare-user")
            _ostree("remote", "add", f"--repo={client}", "--no-gpg-verify", "origin", url)
            _ostree("pull", f"--repo={client}", "origin", "os")
            clients[kind] = client
        base = work / "ostree-a"
        shutil.copytree(clients["objects"], base, symlinks=True)
        _ostree(
            "commit",
            f"--repo={repo}",
            "--branch=os",
            "--tar-autocreate-parents",
            f"--tree=tar={new.layer}",
            "--no-xattrs",
        )
        _ostree("static-delta", "generate", f"--repo={repo}", "--to=os")
        _ostree("summary", "-u", f"--repo={repo}")
        out = []
        for kind, flag in (
            ("objects", "--disable-static-deltas"),
            ("delta", "--require-static-deltas"),
        ):
            _Counting.sent = 0
            _ostree("pull", f"--repo={clients[kind]}", flag, "origin", "os")
            out.append(_Counting.sent)
        if timer is not None:
            timer(url, base, {"ostree": out[0], "ostree_delta": out[1]})
        return out[0], out[1]
    finally:
        server.shutdown()


# --- floors --------------------------------------------------------------------------------


def _files(layer: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256, size) of the regular files in a gzip tar layer."""
    out: dict[str, tuple[str, int]] = {}
    with tarfile.open(layer, "r:gz") as tar:
        for member in tar:
            if member.isreg():
                handle = tar.extractfile(member)
                assert handle is not None
                out[member.name] = (hashlib.sha256(handle.read()).hexdigest(), member.size)
    return out


def _zstd19(paths: list[Path]) -> int:
    proc = subprocess.Popen(
        ["zstd", "-19", "-T1", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    size = 0

    def feed() -> None:
        assert proc.stdin is not None
        for path in paths:
            with path.open("rb") as fh:
                shutil.copyfileobj(fh, proc.stdin)
        proc.stdin.close()

    writer = threading.Thread(target=feed)
    writer.start()
    assert proc.stdout is not None
    while piece := proc.stdout.read(1 << 20):
        size += len(piece)
    writer.join()
    proc.wait()
    return size


def _pair_delta(old: Path, new: Path, work: Path) -> int:
    """The smaller of bsdiff and zstd -19 --patch-from for one changed file."""
    tag = hashlib.sha256(str(new).encode()).hexdigest()[:16]
    patch, zst = work / f"{tag}.bsdiff", work / f"{tag}.zst"
    sizes = []
    try:
        subprocess.run(["bsdiff", str(old), str(new), str(patch)], check=True, timeout=600)
        sizes.append(patch.stat().st_size)
    except (subprocess.SubprocessError, OSError):
        pass
    big = max(old.stat().st_size, new.stat().st_size)
    window = max(10, (big * 2).bit_length())
    subprocess.run(
        [
            "zstd",
            "-19",
            "-T1",
            "-q",
            f"--long={window}",
            f"--patch-from={old}",
            str(new),
            "-o",
            str(zst),
        ],
        check=True,
        stderr=subprocess.DEVNULL,  # its notes on tuning, once per file
    )
    sizes.append(zst.stat().st_size)
    patch.unlink(missing_ok=True)
    zst.unlink(missing_ok=True)
    return min(sizes)


def floors(
    old_tree: Path, new_tree: Path, old: Packed, new: Packed, work: Path
) -> tuple[int, int, int]:
    """F_file, F_delta and the number of changed files."""
    before, after = _files(old.layer), _files(new.layer)
    have = {sha for sha, _ in before.values()}
    lacking = sorted(p for p, (sha, _) in after.items() if sha not in have)
    seen: set[str] = set()
    unique = []
    for path in lacking:
        if after[path][0] not in seen:
            seen.add(after[path][0])
            unique.append(path)
    f_file = _zstd19([new_tree / p for p in unique])
    changed = [p for p in unique if p in before]
    added = [p for p in unique if p not in before]
    scratch = work / "deltas"
    scratch.mkdir(exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        deltas = list(pool.map(lambda p: _pair_delta(old_tree / p, new_tree / p, scratch), changed))
    f_delta = sum(deltas) + (_zstd19([new_tree / p for p in added]) if added else 0)
    return f_file, f_delta, len(unique)


# --- the table -----------------------------------------------------------------------------

COLUMNS = (
    ("full", "full image"),
    ("single", "single layer"),
    ("rechunked", "rechunked"),
    ("partial", "partial"),
    ("delta", "delta"),
    ("ostree", "ostree objects"),
    ("ostree_delta", "ostree delta"),
    ("f_file", "F_file"),
    ("f_delta", "F_delta"),
    ("rechunked_full", "rechunked full"),
)


def _mb(value: int | None) -> str:
    if value is None:
        return "n/a (not implemented)"
    if value < 1 << 20:
        return f"{value / 1024:.1f} KiB"
    return f"{value / (1 << 20):.2f} MiB"


def print_table(rows: list[Row]) -> None:
    print()
    print("bytes W moved to go from A to B (server side; ratios against the full image)")
    for row in rows:
        full = row.values.get("full") or 1
        print(f"\n{row.name}")
        for key, label in COLUMNS:
            value = row.values.get(key)
            ratio = "" if value is None else f"  ({100 * value / full:6.2f} % of full)"
            shown = _mb(value) if key in row.values else "not measured (option)"
            print(f"  {label:<16} {shown:>24}{ratio}")
        for note in row.notes:
            print(f"  note: {note}")
        for line in targets(row):
            print(f"  target: {line}")


def _ratio(top: int | None, bottom: int | None) -> str:
    return "n/a" if top is None or not bottom else f"{top / bottom:.3f}"


def targets(row: Row) -> list[str]:
    """The issue's targets for this row, with the measured ratios."""
    v = row.values
    full = v.get("full") or 1
    out = [
        f"partial / F_file = {_ratio(v.get('partial'), v.get('f_file'))} (<= 1.05)",
        f"delta / F_delta = {_ratio(v.get('delta'), v.get('f_delta'))} (<= 1.1)",
        f"partial / full = {_ratio(v.get('partial'), full)}, "
        f"delta / full = {_ratio(v.get('delta'), full)} (<= 1.01)",
    ]
    ours = [x for x in (v.get("rechunked"), v.get("partial"), v.get("delta")) if x is not None]
    theirs = [x for x in (v.get("ostree"), v.get("ostree_delta")) if x is not None]
    if ours and theirs:
        out.append(
            f"atoll best / ostree best = {min(ours) / max(1, min(theirs)):.3f} (< 1: "
            f"{_mb(min(ours))} vs {_mb(min(theirs))})"
        )
    if row.name == "no-op rebuild" and ours:
        out.append(f"no-op W = {_mb(min(ours))} (<= 64 KiB: {min(ours) <= 64 << 10})")
    return out


def _paths(totals: dict[str, Any]) -> str:
    return ", ".join(
        f"{path} {row['layers']} layers/{row['files']} files/{_mb(row['bytes'])}"
        for path, row in totals.items()
    )


def measure(
    name: str,
    old_tree: Path,
    new_tree: Path,
    *,
    ostree: bool,
    deltas: bool,
    atoll_paths: bool,
    apply: ApplyTimes | None = None,
    max_seconds: float = 0,
) -> Row:
    row = Row(name)
    old = pack(old_tree, old_tree.name, "2025-01-01T00:00:00Z")
    new = pack(new_tree, new_tree.name, "2025-01-02T00:00:00Z")
    row.values["full"] = new.size
    row.values["single"] = 0 if new.digest == old.digest else new.size
    with tempfile.TemporaryDirectory(dir=DIRS.work or DIRS.cache) as tmp:
        work = Path(tmp)
        started = time.monotonic()
        a_layers, b_layers = rechunked_layers(old, new, work)
        row.values["rechunked"] = sum(s for d, s in b_layers.items() if d not in a_layers)
        row.values["rechunked_full"] = sum(b_layers.values())
        row.notes.append(
            f"rechunked: {sum(1 for d in b_layers if d not in a_layers) - 1} of "
            f"{len(b_layers) - 1} layers new, W includes manifest and config "
            f"({b_layers['manifest+config']} bytes); "
            f"{time.monotonic() - started:.0f} s for both rechunks"
        )
        if atoll_paths:
            started = time.monotonic()
            with LocalRegistry(work / "registry") as registry:
                pub = publish_chunked(old, new, work, registry)
                row.notes.append(
                    f"zstd:chunked rechunk and push: {time.monotonic() - started:.0f} s; "
                    f"partial and delta W include manifest and config ({pub.meta} bytes)"
                )
                row.values["partial"], totals = partial_bytes(pub, work)
                row.notes.append(f"partial paths: {_paths(totals)}")
                row.values["delta"], totals, made, old_digest = delta_bytes(pub, work)
                row.notes.append(made)
                row.notes.append(f"delta paths: {_paths(totals)}")
                if apply is not None:
                    started = time.monotonic()
                    atoll_apply(
                        apply, registry.host, pub.old, "bench/os:2", old_digest, pub.ctx,
                        work, row.values, max_seconds,
                    )  # fmt: skip
                    row.notes.append(f"atoll apply times: {time.monotonic() - started:.0f} s")
        if ostree:
            # The ostree cells are skipped by the bytes ostree moves, known after the pulls.
            timer = None
            if apply is not None:
                timer = lambda url, base, moved: ostree_apply(  # noqa: E731
                    apply, url, base, work, moved, max_seconds, _ostree
                )
            row.values["ostree"], row.values["ostree_delta"] = ostree_bytes(old, new, work, timer)
        row.apply = apply
        if deltas:
            started = time.monotonic()
            f_file, f_delta, count = floors(old_tree, new_tree, old, new, work)
            row.values["f_file"], row.values["f_delta"] = f_file, f_delta
            row.notes.append(
                f"floors: {count} files B has that A lacks ({time.monotonic() - started:.0f} s)"
            )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", "--only", action="append", dest="only", help="scenario name (repeatable)"
    )
    parser.add_argument("--no-ostree", action="store_true")
    parser.add_argument("--no-atoll", action="store_true", help="skip partial and delta")
    parser.add_argument("--no-floors", action="store_true", help="skip F_file and F_delta")
    parser.add_argument(
        "--rates",
        default="1,10,50",
        help="link rates in Mbit/s for the apply times (default 1,10,50; empty: none)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120,
        help="skip an apply cell whose bytes alone take longer at its rate (default 120)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="the corpora and packed images (default bench/.cache/transfer; only read "
        "once they are made)",
    )
    parser.add_argument("--work", type=Path, help="where each run's files go (default: --cache)")
    args = parser.parse_args()
    DIRS.cache = args.cache.resolve() if args.cache else DIRS.cache
    DIRS.work = args.work.resolve() if args.work else None
    rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    trees = ensure_corpora(DIRS.cache)
    rows = []
    for name, a, b in SCENARIOS:
        if args.only and name not in args.only:
            continue
        print(f"measuring {name}: {a} -> {b} ...", flush=True)
        rows.append(
            measure(
                name,
                trees[a],
                trees[b],
                ostree=not args.no_ostree,
                deltas=not args.no_floors,
                atoll_paths=not args.no_atoll,
                apply=ApplyTimes(rates) if rates else None,
                max_seconds=args.max_seconds,
            )
        )
        print_table(rows[-1:])
        if rows[-1].apply is not None:
            print_apply(name, rows[-1].apply)
    print_table(rows)
    for row in rows:
        if row.apply is not None:
            print_apply(row.name, row.apply)


if __name__ == "__main__":
    main()
