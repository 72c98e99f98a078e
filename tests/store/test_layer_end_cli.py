"""A layer whose stream ends early (no tar end blocks) or holds nothing (an
empty gzip stream) ends ``install``, ``switch`` and ``upgrade`` from an
``oci:`` layout and from a real registry: the first is read as GNU tar reads
it, the second is refused with exit 14.  Each command runs as a child process
with a timeout, so a hang fails the test, and the sysroot lock is free after."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from helpers.cli import run_atoll
from helpers.osimage import build_os_image, publish_image
from helpers.registry import RegistryView

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

#: Far above what an install of these small images takes, even on a loaded machine.
_COMMAND_TIMEOUT = 240


def _no_end_layer() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("usr/bin/extra")
        info.size, info.mode = 5, 0o755
        tar.addfile(info, io.BytesIO(b"extra"))
    data = raw.getvalue()
    cut = data[:1024]  # the header and the data block: no end blocks
    assert data[1024:] == bytes(len(data) - 1024)
    return cut


def _hostile_image(layout: Path, base_tag: str, tag: str, case: str) -> None:
    """*base_tag*'s image with one more layer on top."""
    index = json.loads((layout / "index.json").read_text())
    [desc] = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == base_tag
    ]
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    tar = _no_end_layer() if case == "no-end" else b""
    blob = gzip.compress(tar, mtime=0)
    digest = hashlib.sha256(blob).hexdigest()
    (blobs / digest).write_bytes(blob)
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(tar).hexdigest())
    layers = [(d["digest"], d["size"]) for d in manifest["layers"]]
    publish_image(layout, tag, config, [*layers, (f"sha256:{digest}", len(blob))])


def _atoll(*args: str) -> tuple[int, str]:
    proc = run_atoll(*args, timeout=_COMMAND_TIMEOUT)
    return proc.returncode, proc.stderr


def _lock_is_free(sysroot: Path) -> bool:
    lock = sysroot / "atoll/lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("transport", ["oci", "docker"])
@pytest.mark.parametrize(("case", "code"), [("no-end", 0), ("empty-gzip", 14)])
def test_install_switch_and_upgrade_end_on_a_short_layer(
    registry: RegistryView, tmp_path: Path, transport: str, case: str, code: int
) -> None:
    layout = tmp_path / "images"
    build_os_image(layout, "good", version="1.0")
    _hostile_image(layout, "good", "bad", case)
    if transport == "oci":
        good, bad = f"oci:{layout}:good", f"oci:{layout}:bad"
        tracked = layout
    else:
        repo = registry.new_repo("os")
        good, bad = f"{registry.host}/{repo}:good", f"{registry.host}/{repo}:bad"
        for tag, ref in (("good", good), ("bad", bad)):
            registry.skopeo(
                "copy",
                "-q",
                *registry.skopeo_args("dest"),
                f"oci:{layout}:{tag}",
                f"docker://{ref}",
            )

    # install
    direct = tmp_path / "direct"
    result, err = _atoll("install", "to-filesystem", str(direct), "--source", bad)
    assert result == code, err
    if code:
        assert "the layer is empty" in err

    # switch, from a device that runs the good image
    device = tmp_path / "device"
    result, err = _atoll("install", "to-filesystem", str(device), "--source", good)
    assert result == 0, err
    assert _atoll("boot", "--sysroot", str(device))[0] == 0
    result, err = _atoll("switch", "--sysroot", str(device), bad)
    assert result == code, err
    assert _lock_is_free(device)

    # upgrade: the tag the device follows moves to the image with the short layer
    follower = tmp_path / "follower"
    result, err = _atoll("install", "to-filesystem", str(follower), "--source", good)
    assert result == 0, err
    assert _atoll("boot", "--sysroot", str(follower))[0] == 0
    if transport == "oci":
        _hostile_image(tracked, "good", "good", case)
    else:
        registry.skopeo(
            "copy", "-q", *registry.skopeo_args("dest"), f"oci:{layout}:bad", f"docker://{good}"
        )
    result, err = _atoll("upgrade", "--sysroot", str(follower))
    assert result == code, err
    assert _lock_is_free(follower)
    # A later command is not locked out (exit 32).
    result, err = _atoll("upgrade", "--sysroot", str(follower))
    assert result == code, err
