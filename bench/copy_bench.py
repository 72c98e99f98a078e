"""Benchmark: atoll image copy against skopeo copy, same image, same run.

Builds (once, cached in bench/.cache) a multi-layer OCI image of at least 200 MB
from real files of this machine's /usr, pushes it to a local registry with
skopeo, then times registry→oci: and registry→registry copies by both tools,
alternating, and prints medians, peak memory and the ratios atoll/skopeo.

``--before SRC`` runs a second atoll beside them, the same entry point with
``PYTHONPATH=SRC`` (e.g. ``git archive main src | tar -x -C /tmp/before``), so
that a change is measured against the code before it in the same minutes;
``--mounts-only`` keeps the copy within one registry (start-up and a few
requests) and the start-up line.

Each atoll's modules are compiled to bytecode first, as an installed package
has them: where ``PYTHONDONTWRITEBYTECODE`` is set or the tree is read-only,
every run would otherwise compile every module from source again (about 35 ms
of CPU on a copy that only mounts blobs), which is not what a user pays.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import gzip
import hashlib
import json
import os
import py_compile
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import atoll
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


def compile_bytecode(package: Path) -> None:
    """Write the ``.pyc`` of every module under *package*, checked by timestamp as
    the interpreter writes them itself (not by hash, which SOURCE_DATE_EPOCH would
    select, and which reads every source at every start)."""
    ok = compileall.compile_dir(
        package, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
    )
    if not ok:
        raise SystemExit(f"could not compile the modules under {package}")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run a command; return wall seconds, CPU seconds (user + system) and its
    peak RSS in KiB (both from wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{argv[0]} failed: {err.strip()}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def settle(path: Path) -> None:
    """Wait until *path* was last changed longer ago than atoll's registries.conf
    cache asks of a file it keeps (``SETTLED_NS``), as a user's configuration
    is: a file written a moment before each copy is parsed by every run of
    atoll (skopeo parses it at every run anyway, and pays little for it)."""
    from atoll.oci.registries_conf import SETTLED_NS

    st = path.stat()
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    time.sleep(max(0.0, (changed + SETTLED_NS - time.time_ns()) / 1e9 + 0.1))


def _atoll_command() -> list[str]:
    """The ``atoll`` a user runs (the entry point beside this interpreter), so that
    start-up is measured as it is paid; ``python -m atoll`` where there is none."""
    script = Path(sys.executable).with_name("atoll")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "atoll"]


ATOLL = _atoll_command()


class Bench:
    """Registries, names and runs for one benchmark session."""

    def __init__(self, tmp: Path, skopeo: str, before: Path | None = None) -> None:
        self.tmp = tmp
        self.policy = tmp / "policy.json"
        self.policy.write_text(POLICY)
        self.conf = tmp / "registries.conf"
        self.conf.write_text("")
        self.env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(self.conf))
        self.skopeo = [skopeo, "--policy", str(self.policy)]
        self._count = 0
        #: The tools compared: skopeo, atoll, and atoll from *before*'s sources.
        self.tools = ("skopeo", "atoll", "before") if before else ("skopeo", "atoll")
        self._before_env = dict(self.env, PYTHONPATH=str(before)) if before else self.env
        compile_bytecode(Path(atoll.__file__).parent)
        if before:
            compile_bytecode(before / "atoll")

    @contextlib.contextmanager
    def registry(self, label: str) -> Iterator[LocalRegistry]:
        self._count += 1
        reg = LocalRegistry(self.tmp / f"reg-{label}-{self._count}")
        with self.conf.open("a") as fh:
            fh.write(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        with reg:
            yield reg
        shutil.rmtree(reg.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def destination(self, case: str, source: LocalRegistry, tool: str, i: int) -> Iterator[str]:
        if case.endswith("oci:"):
            path = self.tmp / f"{tool}-{i}"
            yield f"oci:{path}:1"
            shutil.rmtree(path, ignore_errors=True)
        elif case.endswith("same registry"):
            yield f"docker://{source.host}/bench/{tool}-{i}:1"
        else:
            # A fresh registry each time: every blob really travels.
            with self.registry("dest") as reg:
                yield f"docker://{reg.host}/bench/{tool}-{i}:1"

    def skopeo_copy(self, src: str, dst: str) -> None:
        flags = ["--src-tls-verify=false", "--dest-tls-verify=false"]
        subprocess.run([*self.skopeo, "copy", "-q", *flags, src, dst], check=True, env=self.env)

    def copy(self, tool: str, src: str, dst: str, expected: str) -> tuple[float, float, int]:
        digestfile = self.tmp / "digest"
        if tool == "skopeo":
            flags = ["--src-tls-verify=false", "--dest-tls-verify=false"]
            argv = [*self.skopeo, "copy", "-q", *flags, "--digestfile", str(digestfile), src, dst]
        else:
            argv = [*ATOLL, "-q", "image", "copy", "--digestfile", str(digestfile), src, dst]
        result = timed(argv, self._before_env if tool == "before" else self.env)
        if digestfile.read_text().strip() != expected:
            raise SystemExit(f"{tool} copied {src} to {dst} with another digest")
        return result


def print_startup(env: dict[str, str], runs: int) -> None:
    """``atoll version`` against an interpreter that starts and does nothing."""
    times: dict[str, list[float]] = {"python": [], "atoll": []}
    cpu: dict[str, list[float]] = {"python": [], "atoll": []}
    for _ in range(runs):
        for name, argv in (
            ("python", [sys.executable, "-c", "pass"]),
            ("atoll", [*ATOLL, "version"]),
        ):
            wall, used, _ = timed(argv, env)
            times[name].append(wall)
            cpu[name].append(used)
    base, own = statistics.median(times["python"]), statistics.median(times["atoll"])
    print(
        f"\nstart-up, median of {runs}: python -c pass {base * 1000:.1f} ms, "
        f"atoll version {own * 1000:.1f} ms (ratio {own / base:.2f}, "
        f"{(own - base) * 1000:+.1f} ms); CPU {statistics.median(cpu['python']) * 1000:.1f} "
        f"and {statistics.median(cpu['atoll']) * 1000:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=640, help="raw image size (default 640)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--before", type=Path, metavar="SRC", help="also run atoll from these sources (PYTHONPATH)"
    )
    parser.add_argument(
        "--mounts-only", action="store_true", help="only the copy within one registry, and start-up"
    )
    args = parser.parse_args()

    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise SystemExit("skopeo is not installed (apt-get install skopeo)")
    layout = CACHE / f"image-{args.size_mb}mb-{args.layers}l"
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"building the test image from /usr files (cached in {layout}) ...", flush=True)
    build_image(layout, args.size_mb << 20, args.layers)
    blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())

    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp_text:
        tmp = Path(tmp_text)
        bench = Bench(tmp, skopeo, args.before.resolve() if args.before else None)
        with bench.registry("source") as reg_a:
            src = f"docker://{reg_a.host}/bench/src:1"
            bench.skopeo_copy(f"oci:{layout}:1", src)
            expected = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
            print(
                f"image: {args.layers} layers, {blob_bytes / 2**20:.0f} MiB compressed, "
                f"{args.size_mb} MiB raw; {args.runs} runs each, tools alternating\n",
                flush=True,
            )
            print(
                f"{'case':30} {'skopeo s':>9} {'atoll s':>9} {'time ratio':>10} "
                f"{'skopeo MiB':>10} {'atoll MiB':>10} {'mem ratio':>9} "
                f"{'skopeo CPU ms':>13} {'atoll CPU ms':>12}"
            )
            cases = ["registry -> same registry"]
            if not args.mounts_only:
                cases = ["registry -> oci:", *cases, "registry -> new registry"]
            for case in cases:
                if case.endswith("same registry"):
                    settle(bench.conf)
                # Same registry (the mount-only row): every blob is mounted from the
                # source repository, no blob bytes move; the time is start-up and
                # a few requests.
                times: dict[str, list[float]] = {tool: [] for tool in bench.tools}
                cpus: dict[str, list[float]] = {tool: [] for tool in bench.tools}
                mems: dict[str, list[int]] = {tool: [] for tool in bench.tools}
                for i in range(args.runs):
                    for tool in bench.tools:
                        with bench.destination(case, reg_a, tool, i) as target:
                            seconds, used, rss = bench.copy(tool, src, target, expected)
                        times[tool].append(seconds)
                        cpus[tool].append(used)
                        mems[tool].append(rss)
                s_t, s_m = statistics.median(times["skopeo"]), max(mems["skopeo"]) / 1024
                s_c = statistics.median(cpus["skopeo"]) * 1000
                for tool in bench.tools[1:]:
                    a_t, a_m = statistics.median(times[tool]), max(mems[tool]) / 1024
                    a_c = statistics.median(cpus[tool]) * 1000
                    label = case if tool == "atoll" else f"{case}, before"
                    print(
                        f"{label:30} {s_t:9.3f} {a_t:9.3f} {a_t / s_t:10.2f} "
                        f"{s_m:10.1f} {a_m:10.1f} {a_m / s_m:9.2f} {s_c:13.1f} {a_c:12.1f}",
                        flush=True,
                    )
            if args.mounts_only:
                print_startup(bench.env, max(args.runs, 11))
                return 0
            # Memory against blob size: the same files as one layer, four times larger.
            one = CACHE / f"image-{args.size_mb}mb-1l"
            build_image(one, args.size_mb << 20, 1)
            one_src = f"docker://{reg_a.host}/bench/one:1"
            bench.skopeo_copy(f"oci:{one}:1", one_src)
            one_expected = json.loads((one / "index.json").read_text())["manifests"][0]["digest"]
            print("\npeak memory of atoll against the largest blob (registry -> oci:):")
            for label, image, name, digest in (
                (f"{args.layers} layers", layout, src, expected),
                ("1 layer", one, one_src, one_expected),
            ):
                largest = max(p.stat().st_size for p in (image / "blobs" / "sha256").iterdir())
                with bench.destination("registry -> oci:", reg_a, "mem", 0) as target:
                    _, _, rss = bench.copy("atoll", name, target, digest)
                mib = largest / 2**20
                print(f"  {label:10} largest blob {mib:7.1f} MiB  peak RSS {rss / 1024:6.1f} MiB")
            print_startup(bench.env, max(args.runs, 11))
    print("\nratios are atoll / skopeo: below 1.00 means atoll is faster or smaller")
    return 0


if __name__ == "__main__":
    sys.exit(main())
