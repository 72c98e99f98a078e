"""A cache of root file system trees, and trees packed as OCI layers.

Shared by ``atoll base create`` (atoll.build.base), the demo and the tests: one
cache layout, one builder at a time::

    CACHE/
    ├── .lock                       flock held while building: one builder at a time
    ├── .build-XXXXXXXX/            a build in progress; one found while holding the
    │                               lock is a leftover of a killed build and is removed
    └── NAME-KEY/                   KEY: a hash of the recipe; renamed into place when done
        ├── rootfs/                 the prepared tree (never booted or changed in place)
        └── recipe.json             the recipe and how long the bootstrap took
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from atoll.errors import CommandError, DemoStateError
from atoll.fsutil import HashingWriter
from atoll.run import run

SUITE = "bookworm"
_EMPTIED = frozenset({"dev", "proc", "sys", "run", "tmp", "var/tmp"})


@dataclass(frozen=True)
class TreeRecipe:
    """A tree of the cache: its recipe (hashed into the cache key), how to
    debootstrap it and how to prepare it."""

    data: dict[str, object]
    bootstrap: Callable[[Path], None]
    prepare: Callable[[Path], None]

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()[:16]

    def entry(self, cache: Path) -> Path:
        """The tree's directory in *cache* (it holds ``rootfs/`` once built)."""
        return cache / f"debian-{self.data.get('suite', SUITE)}-{self.key}"


def ensure_tree(cache: Path, tree: TreeRecipe) -> Path:
    """The prepared tree (``rootfs/`` in the tree's directory of *cache*), made
    first with the recipe's bootstrap if the cache has none."""
    final = tree.entry(cache)
    if (final / "recipe.json").is_file():
        return final / "rootfs"
    cache.mkdir(parents=True, exist_ok=True)
    with lock_cache(cache):
        if (final / "recipe.json").is_file():  # built by another process while we waited
            return final / "rootfs"
        for stale in cache.glob(".build-*"):
            remove_build(stale)
        build = cache / f".build-{secrets.token_hex(4)}"
        build.mkdir()
        try:
            started = time.monotonic()
            tree.bootstrap(build / "rootfs")
            seconds = round(time.monotonic() - started, 1)
            tree.prepare(build / "rootfs")
            record = {**tree.data, "debootstrap_seconds": seconds}
            (build / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
            build.rename(final)
        finally:
            if build.exists():
                remove_build(build)
    return final / "rootfs"


@contextlib.contextmanager
def lock_cache(cache: Path) -> Iterator[None]:
    with (cache / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below *path* in this mount namespace, deepest first."""
    found = []
    top = os.path.realpath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = _unescape(line.split()[4])
            if point == top or point.startswith(top + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def remove_build(path: Path) -> None:
    """Remove a build; a killed debootstrap may have left /proc or /sys mounted
    in it, which is unmounted, never deleted through."""
    for point in mounts_under(path):
        run(["umount", "--lazy", point], check=False)
    left = mounts_under(path)
    if left:
        raise DemoStateError(
            f"{path}: still mounted at {left[0]}; not removing it",
            hint=f"unmount it (umount --lazy {left[0]}), then run again",
        )
    shutil.rmtree(path)


# --- tar layers ---


@dataclass(frozen=True)
class Blob:
    digest: str
    diff_id: str
    size: int


_Entry = tuple[tarfile.TarInfo, Path | bytes | None]


def tree_entries(
    root: Path, *, clamp: int | None = None, leave_out: frozenset[str] = frozenset()
) -> Iterator[_Entry]:
    """The entries of a tree's layer: sorted, numeric owners, no device nodes or
    fifos, API file systems and runtime state emptied; with *clamp*, no mtime
    later than it (SOURCE_DATE_EPOCH: the same files give the same layer); without
    the files *leave_out* names (paths relative to *root*)."""
    probe = tarfile.TarFile(fileobj=io.BytesIO(), mode="w")
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root).as_posix()
        if rel in _EMPTIED:
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = here / name
            arcname = path.relative_to(root).as_posix()
            if arcname in leave_out:
                continue
            info = probe.gettarinfo(str(path), arcname=arcname)
            if info.ischr() or info.isblk() or info.isfifo():
                continue
            info.uname = info.gname = ""
            if clamp is not None:
                info.mtime = min(int(info.mtime), clamp)
            yield info, (path if info.isfile() else None)


def write_layer(out: IO[bytes], entries: Iterator[_Entry] | list[_Entry]) -> Blob:
    """Write *entries* to *out* as a gzip tar layer; return its digests and size."""
    packed = HashingWriter(out)
    with gzip.GzipFile(fileobj=cast(IO[bytes], packed), mode="wb", compresslevel=1, mtime=0) as gz:
        plain = HashingWriter(cast(IO[bytes], gz))
        with tarfile.open(fileobj=cast(IO[bytes], plain), mode="w", format=tarfile.PAX_FORMAT) as t:
            for info, content in entries:
                if isinstance(content, Path):
                    with content.open("rb") as fh:
                        t.addfile(info, fh)
                elif isinstance(content, bytes):
                    t.addfile(info, io.BytesIO(content))
                else:
                    t.addfile(info)
    return Blob("sha256:" + packed.sha.hexdigest(), "sha256:" + plain.sha.hexdigest(), packed.size)


def base_layer(
    tree: Path, cache: Path, *, clamp: int | None = None, leave_out: frozenset[str] = frozenset()
) -> tuple[Path, Blob]:
    """The tree as one gzip layer (mtimes clamped to *clamp*, without the files
    *leave_out* names), made once per tree and kept in *cache*."""
    where = os.path.realpath(tree) + ("" if clamp is None else f"@{clamp}")
    if leave_out:
        where += "-" + hashlib.sha256("\n".join(sorted(leave_out)).encode()).hexdigest()
    key = hashlib.sha256(where.encode()).hexdigest()[:16]
    blob, meta = cache / f"base-layer-{key}.tar.gz", cache / f"base-layer-{key}.json"
    if meta.is_file() and blob.is_file():
        return blob, Blob(**json.loads(meta.read_text()))
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=".layer-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tmp.open("wb") as raw:
            layer = write_layer(raw, tree_entries(tree, clamp=clamp, leave_out=leave_out))
        tmp.rename(blob)
    finally:
        tmp.unlink(missing_ok=True)
    meta.write_text(json.dumps(layer.__dict__))
    return blob, layer


def put_blob(blobs: Path, data: bytes) -> str:
    """Write *data* to the blob directory *blobs*; return its digest."""
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}"


def write_image_layout(layout: Path, config: bytes, layers: list[Blob], ref: str) -> str:
    """Write an image of *config* and *layers* (gzip layers already in the layout's
    blobs) to the OCI layout *layout* as *ref*; return the manifest's digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put_blob(blobs, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": b.digest,
                    "size": b.size,
                }
                for b in layers
            ],
        }
    ).encode()
    digest = put_blob(blobs, manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return digest


def run_bootstrap(argv: list[str], env: Mapping[str, str] | None = None) -> None:
    """Run a tree's bootstrap (debootstrap, dnf --installroot); its failure is a
    CommandError with the last lines of its output."""
    proc = run(argv, check=False, env=env)
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(
            f"{Path(argv[0]).name} failed with exit code {proc.returncode}: {' | '.join(tail)}",
            argv=argv,
            returncode=proc.returncode,
        )
