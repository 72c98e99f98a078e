"""podman 5's own Quadlet generator, the parity oracle, fetched once and cached::

CACHE/                          $ATOLL_TEST_CACHE, else /var/cache/atoll-tests
└── quadlet-VERSION/quadlet     from Debian trixie's podman .deb (only this file);
                                built in a temp dir, renamed into place
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers.parts import download, missing

VERSION = "5.4.2+ds1-2+b2"
URL = f"http://deb.debian.org/debian/pool/main/p/podman/podman_{VERSION}_amd64.deb"
SHA256 = "e3987a9d1e6d46cbd4ee11bd067927a5f7f886e41c7a2dbe5b89a436905d44a0"


def _cache() -> Path:
    return Path(os.environ.get("ATOLL_TEST_CACHE", "/var/cache/atoll-tests"))


@pytest.fixture(scope="session")
def podman_quadlet() -> Path:
    target = _cache() / f"quadlet-{VERSION}"
    binary = target / "quadlet"
    if binary.exists():
        return binary
    if shutil.which("dpkg-deb") is None:
        missing("dpkg-deb is needed to unpack podman's .deb")
    data = download(URL, SHA256)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        deb = Path(tmp) / "podman.deb"
        deb.write_bytes(data)
        subprocess.run(["dpkg-deb", "-x", deb, Path(tmp) / "x"], check=True)
        staged = Path(tmp) / "out"
        staged.mkdir()
        shutil.copy2(Path(tmp) / "x/usr/libexec/podman/quadlet", staged / "quadlet")
        try:
            staged.rename(target)
        except OSError:
            if not binary.exists():  # another session won the race: that is success
                raise
    return binary
