"""A small apt repository on loopback, so build tests install packages without the internet.

The .debs are fetched once from deb.debian.org (pinned by sha256) into the cache,
indexed with ``apt-ftparchive`` and served by Python's http.server on 127.0.0.1::

    CACHE/                              $ATOLL_TEST_CACHE, else /var/cache/atoll-tests
    ├── aptrepo-KEY/                    KEY: sha256 of DEBS; renamed into place when complete
    │   ├── strace_6.1-0.1_amd64.deb    (and its dependencies the test base lacks)
    │   ├── Packages, Packages.gz       apt-ftparchive packages .
    │   └── Release                     apt-ftparchive release .
    └── aptrepo-tree-KEY/               ensure_tree_repo(): the packages a cached tree's
                                        builds install (KEY: the tree, suite and packages)

An image uses it with ``deb [trusted=yes] http://127.0.0.1:PORT/ ./`` in
``/etc/apt/sources.list`` (a flat repository); podman build reaches it with
``--network host``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from atoll.demo.basetree import MIRROR, lock_cache
from helpers.debian import DebianTree
from helpers.parts import download, missing

POOL = "http://deb.debian.org/debian/pool/main"
#: bookworm's strace and what it needs beyond the test base (libc6 and liblzma5 are there).
DEBS = {
    "strace_6.1-0.1_amd64.deb": (
        f"{POOL}/s/strace/strace_6.1-0.1_amd64.deb",
        "1942d086a6244a1a9643489d3b0aa604ac44b88991d6c69217a63a193671bd4f",
    ),
    "libunwind8_1.6.2-3_amd64.deb": (
        f"{POOL}/libu/libunwind/libunwind8_1.6.2-3_amd64.deb",
        "7b297868682836e4c87be349f17e4a56bc287586e3576503e84a5cb5485ce925",
    ),
}


def _cache() -> Path:
    return Path(os.environ.get("ATOLL_TEST_CACHE") or "/var/cache/atoll-tests")


def _key() -> str:
    text = "".join(f"{name}={sha}\n" for name, (_, sha) in sorted(DEBS.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_repo(cache: Path | None = None) -> Path:
    """The indexed repository directory, fetched and built first if needed."""
    final = (cache or _cache()) / f"aptrepo-{_key()}"
    if (final / "Release").is_file():
        return final
    if platform.machine() != "x86_64":
        missing("the test apt repository holds amd64 packages only")
    if shutil.which("apt-ftparchive") is None:
        missing("apt-ftparchive is not installed (apt-get install apt-utils)")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-aptrepo-") as tmp:
        staged = Path(tmp) / "repo"
        staged.mkdir()
        for name, (url, sha) in DEBS.items():
            (staged / name).write_bytes(download(url, sha))
        _index(staged)
        try:
            staged.rename(final)
        except OSError:
            if not (final / "Release").is_file():  # another session won the race: fine
                raise
    return final


def _index(repo: Path) -> None:
    """Packages, Packages.gz and Release of the flat repository *repo*."""
    packages = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=repo, capture_output=True, check=True
    ).stdout
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    release = subprocess.run(
        ["apt-ftparchive", "release", "."], cwd=repo, capture_output=True, check=True
    ).stdout
    (repo / "Release").write_bytes(release)


def ensure_tree_repo(tree: DebianTree, suite: str, packages: tuple[str, ...]) -> Path:
    """A flat repository, cached beside *tree*, holding *packages* and whatever they
    need that the tree lacks: an image built on the tree installs them from it alone.

    Made once, under the cache's lock: the host's apt-get resolves *packages* against
    the tree's dpkg status and downloads them from the tree's mirror (checked with the
    tree's Debian keyring), without changing the tree."""
    wanted = sorted(set(packages))
    key = hashlib.sha256(json.dumps([tree.cache.name, suite, wanted]).encode()).hexdigest()
    cache = tree.cache.parent
    final = cache / f"aptrepo-tree-{key[:16]}"
    if (final / "Release").is_file():
        return final
    if shutil.which("apt-ftparchive") is None or shutil.which("apt-get") is None:
        missing("apt-get and apt-ftparchive are needed (apt-get install apt-utils)")
    with lock_cache(cache):
        if (final / "Release").is_file():
            return final
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-aptrepo-") as tmp:
            work = Path(tmp)
            staged = work / "repo"
            staged.mkdir()
            _download_for(tree.rootfs, suite, wanted, work, staged)
            _index(staged)
            staged.rename(final)
    return final


def _download_for(root: Path, suite: str, packages: list[str], work: Path, dest: Path) -> None:
    keyring = root / "usr/share/keyrings/debian-archive-keyring.gpg"
    (work / "sources.list").write_text(f"deb [signed-by={keyring}] {MIRROR} {suite} main\n")
    for directory in ("lists/partial", "archives/partial", "parts"):
        (work / directory).mkdir(parents=True)
    options = {
        "Dir::Etc::SourceList": work / "sources.list",
        "Dir::Etc::SourceParts": work / "parts",
        "Dir::Etc::PreferencesParts": work / "parts",
        "Dir::State": work,
        "Dir::State::Lists": work / "lists",
        "Dir::State::status": root / "var/lib/dpkg/status",
        "Dir::Cache": work,
        "Dir::Cache::archives": work / "archives",
        "APT::Install-Recommends": "false",
        "APT::Sandbox::User": "root",
    }
    argv = ["apt-get", "-q", *(f"-o{k}={v}" for k, v in options.items())]
    for args in (["update"], ["install", "--download-only", "-y", *packages]):
        proc = subprocess.run([*argv, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            missing(f"apt-get {args[0]} for the tree's repository failed: {proc.stderr[-500:]}")
    for deb in (work / "archives").glob("*.deb"):
        deb.rename(dest / deb.name)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class AptRepo:
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def sources_line(self) -> str:
        return f"deb [trusted=yes] {self.url} ./\n"


@contextlib.contextmanager
def serve(root: Path) -> Iterator[AptRepo]:
    """Serve *root* over HTTP on a free loopback port while the block runs."""
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="apt-repo", daemon=True)
    thread.start()
    try:
        yield AptRepo(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def apt_repo() -> Iterator[AptRepo]:
    """The local apt repository, served on 127.0.0.1 for the whole session."""
    with serve(ensure_repo()) as repo:
        yield repo
