"""A small apt repository on loopback, so build tests install packages without the internet.

The .debs are fetched once from deb.debian.org (pinned by sha256) into the cache,
indexed with ``apt-ftparchive`` and served by Python's http.server on 127.0.0.1::

    CACHE/                              $ATOLL_TEST_CACHE, else /var/cache/atoll-tests
    └── aptrepo-KEY/                    KEY: sha256 of DEBS; renamed into place when complete
        ├── strace_6.1-0.1_amd64.deb    (and its dependencies the test base lacks)
        ├── Packages, Packages.gz       apt-ftparchive packages .
        └── Release                     apt-ftparchive release .

An image uses it with ``deb [trusted=yes] http://127.0.0.1:PORT/ ./`` in
``/etc/apt/sources.list`` (a flat repository); podman build reaches it with
``--network host``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
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
        packages = subprocess.run(
            ["apt-ftparchive", "packages", "."],
            cwd=staged,
            capture_output=True,
            check=True,
        ).stdout
        (staged / "Packages").write_bytes(packages)
        (staged / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        release = subprocess.run(
            ["apt-ftparchive", "release", "."], cwd=staged, capture_output=True, check=True
        ).stdout
        (staged / "Release").write_bytes(release)
        try:
            staged.rename(final)
        except OSError:
            if not (final / "Release").is_file():  # another session won the race: fine
                raise
    return final


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
