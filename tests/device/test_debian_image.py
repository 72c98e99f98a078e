"""The cached Debian tree packed as a bootable OCI image (helpers.debian), checked with
skopeo and GNU tar, then unpacked and booted."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from atoll.device import DeviceBootOutcome, boot_container
from helpers.debian import DebianTree, build_debian_image
from helpers.osimage import KVER, FileSpec
from helpers.parts import require_tool

MARKER_UNIT = (
    "[Unit]\nAfter=multi-user.target\nSuccessAction=poweroff\n"
    "FailureAction=exit\nFailureActionExitStatus=9\n"
    "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'cat /etc/atoll/release > /var/booted'\n"
)


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_has_labels_layers_and_boots(debian_tree: DebianTree, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    layout = tmp_path / "layout"
    build_debian_image(
        layout,
        "v1",
        debian_tree,
        version="1.0",
        kernel=True,
        add={
            "etc/atoll/release": "1.0\n",
            "etc/systemd/system/atoll-marker.service": MARKER_UNIT,
            "etc/systemd/system/multi-user.target.wants/atoll-marker.service": FileSpec(
                symlink="../atoll-marker.service"
            ),
        },
    )
    inspect = subprocess.run(
        [skopeo, "inspect", f"oci:{layout}:v1"], capture_output=True, check=True
    )
    info = json.loads(inspect.stdout)
    assert info["Labels"] == {"containers.bootc": "1", "org.opencontainers.image.version": "1.0"}
    assert len(info["Layers"]) == 2
    for path in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name

    manifest = json.loads(blob(layout, info["Digest"]).read_text())
    config = json.loads(blob(layout, manifest["config"]["digest"]).read_text())
    layers = [blob(layout, layer["digest"]) for layer in manifest["layers"]]
    diff_ids = [
        "sha256:" + hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() for p in layers
    ]
    assert config["rootfs"]["diff_ids"] == diff_ids

    with tarfile.open(layers[0]) as tar:
        members = {m.name: m for m in tar}
    assert members["usr/lib/systemd/systemd"].isfile()
    assert members["dev"].isdir()
    assert not [name for name in members if name.startswith(("dev/", "proc/", "sys/"))]
    assert not [m.name for m in members.values() if m.ischr() or m.isblk() or m.isfifo()]
    assert not [name for name in members if name.startswith("usr/lib/modules/")]

    # Unpack as a runtime would (GNU tar, layer by layer), split off /var, boot.
    root, var = tmp_path / "root", tmp_path / "var"
    root.mkdir()
    for layer in layers:
        subprocess.run(["tar", "-xzf", str(layer), "-C", str(root), "--numeric-owner"], check=True)
    assert (root / f"usr/lib/modules/{KVER}/vmlinuz").read_bytes() == b"KERNEL 1.0"
    (root / "var").rename(var)
    (root / "var").mkdir()
    boot = boot_container(root, var=var, machine="atoll-image-test", timeout=60)
    assert boot.outcome is DeviceBootOutcome.POWEROFF, boot.console_tail
    assert (var / "booted").read_text() == "1.0\n"


@pytest.mark.integration
@pytest.mark.slow
def test_image_without_additions_has_one_layer(debian_tree: DebianTree, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = build_debian_image(layout, "base", debian_tree, version="0.1")
    manifest = json.loads(blob(layout, digest).read_text())
    assert len(manifest["layers"]) == 1
    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
