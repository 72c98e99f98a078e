"""The container-boot device running atoll's own units under real systemd."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atoll.units import install_atoll, install_units
from helpers.cli import run_atoll
from helpers.debian import DebianTree, build_debian_image
from helpers.osimage import FileSpec, tree_spec

APPLY_UNIT = """\
[Unit]
Description=test: stage image 2 and apply it, once
Before=atoll-healthcheck.service
ConditionPathExists=!/var/lib/test/applied

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /var/lib/test && touch /var/lib/test/applied && \
  atoll switch --sysroot /sysroot oci:/sysroot/images:2 --apply'

[Install]
WantedBy=multi-user.target
"""


def atoll(*args: str) -> subprocess.CompletedProcess[str]:
    return run_atoll(*args)


def image_files(tmp: Path, extra_units: dict[str, str]) -> dict[str, object]:
    stage = tmp / f"stage-{len(extra_units)}"
    install_atoll(stage)
    install_units(stage)
    unit_dir = stage / "usr/lib/systemd/system"
    wants = stage / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in extra_units.items():
        (unit_dir / name).write_text(text)
        (wants / name).symlink_to(f"/usr/lib/systemd/system/{name}")
    spec: dict[str, object] = dict(tree_spec(stage))
    return spec


@pytest.mark.integration
@pytest.mark.slow
def test_update_applied_inside_is_finalized_at_shutdown(
    tmp_path: Path, debian_tree: DebianTree
) -> None:
    images = tmp_path / "images"
    v1 = image_files(tmp_path, {"test-apply.service": APPLY_UNIT})
    build_debian_image(images, "1", debian_tree, version="1.0", add=v1, kernel=True)  # type: ignore[arg-type]
    v2 = image_files(tmp_path, {})
    v2["usr/bin/new-in-2"] = FileSpec(b"#!/bin/sh\necho 2\n", 0o755)
    build_debian_image(images, "2", debian_tree, version="2.0", add=v2, kernel=True)  # type: ignore[arg-type]
    sysroot = tmp_path / "sysroot"
    proc = atoll("install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    assert proc.returncode == 0, proc.stderr
    # The device reaches the images through its sysroot (/sysroot/images inside).
    shutil.copytree(images, sysroot / "images")
    console = tmp_path / "console.log"
    proc = atoll(
        "device",
        "boot",
        "--sysroot",
        str(sysroot),
        "--max-boots",
        "3",
        "--timeout",
        "120",
        "--console-log",
        str(console),
        "--json",
    )
    log = console.read_text() if console.exists() else ""
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    boots: list[dict[str, Any]] = json.loads(proc.stdout)["boots"]
    # v1 applies the update and reboots; shutdown finalizes it; v2 boots green.
    assert [b["outcome"] for b in boots] == ["reboot", "poweroff"], log[-3000:]
    assert boots[0]["deployment"] != boots[1]["deployment"]
    assert boots[1]["triesLeft"] == 2  # the first of its three tries is counted
    assert "Finalized" in log  # atoll-finalize-staged.service ran at shutdown, inside
    doc = json.loads(atoll("status", "--sysroot", str(sysroot), "--format", "json").stdout)
    assert doc["status"]["booted"]["image"]["version"] == "2.0"
    assert doc["status"]["booted"]["atoll"]["bootState"] == "good"
    assert doc["status"]["rollback"]["image"]["version"] == "1.0"
    # Human output: the boot lines are the result, on stdout as --json's document is.
    proc = atoll("device", "boot", "--sysroot", str(sysroot), "--max-boots", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("boot 1: "), proc.stdout
    assert "-> poweroff" in proc.stdout
    assert proc.stderr == ""
