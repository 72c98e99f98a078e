"""The classic edge rollback scenario, on the directory device and under real systemd.

v1 remembers, at its first boot, which deployment it is.  v2 adds a "package"
and a required check that fails when the running deployment is not the
remembered one: every boot of v2 is red, the bootloader counts the attempts,
falls back to v1 after three, and atoll makes that permanent and records why.
v3 fixes the check; its upgrade succeeds, and the package is there only then.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.busybox_root import REQUIRED, WANTED, busybox_files
from helpers.cli import run_atoll
from helpers.osimage import FileSpec, build_os_image, tree_spec

REMEMBER = (
    "mkdir -p /var/lib/edge\n"
    '[ -f /var/lib/edge/first ] || echo "$ATOLL_DEPLOYMENT" > /var/lib/edge/first\n'
)
SAME_DEPLOYMENT = (
    'first="$(cat /var/lib/edge/first)"\n'
    'if [ "$first" != "$ATOLL_DEPLOYMENT" ]; then\n'
    '  echo "deployment $ATOLL_DEPLOYMENT is not $first, the one of the first boot"\n'
    "  exit 3\n"
    "fi\n"
)
FIXED = 'echo "$ATOLL_DEPLOYMENT" > /var/lib/edge/first\n'
PACKAGE = "usr/bin/strace"


def atoll(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run_atoll(*args)
    if ok:
        assert proc.returncode == 0, f"atoll {' '.join(args)}: {proc.stderr}"
    return proc


def status(sysroot: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        atoll("status", "--sysroot", str(sysroot), "--format", "json").stdout
    )
    return doc


def booted_version(sysroot: Path) -> str:
    version: str = status(sysroot)["status"]["booted"]["image"]["version"]
    return version


def booted_root(sysroot: Path) -> Path:
    atoll_ = status(sysroot)["status"]["booted"]["atoll"]
    return (
        sysroot
        / "atoll/deploy"
        / atoll_["stateroot"]
        / "deploy"
        / f"{atoll_['commit']}.{atoll_['deploySerial']}"
    )


def run_scenario(
    sysroot: Path,
    images: Path,
    boot: Callable[[int], subprocess.CompletedProcess[str]],
) -> None:
    s = ("--sysroot", str(sysroot))
    # The device follows the tag "stable", which moves from v1 to v2.
    atoll("image", "copy", f"oci:{images}:1", f"oci:{images}:stable")
    atoll("install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:stable")
    boot(1)
    assert booted_version(sysroot) == "1.0"

    atoll("image", "copy", f"oci:{images}:2", f"oci:{images}:stable")
    atoll("upgrade", *s)
    boot(6)  # three red boots of v2, then the fallback to v1, which is green
    doc = status(sysroot)
    assert doc["status"]["booted"]["image"]["version"] == "1.0"
    assert doc["status"]["rollback"]["image"]["version"] == "2.0"
    assert doc["status"]["rollback"]["atoll"]["bootState"] == "bad"
    rollback = doc["status"]["atoll"]["lastRollback"]
    assert rollback["attemptsUsed"] == 3
    assert rollback["reason"]["name"] == "50-same-deployment.sh"
    assert rollback["reason"]["exitCode"] == 3
    assert "the one of the first boot" in rollback["reason"]["output"]
    assert rollback["from"].startswith(doc["status"]["rollback"]["atoll"]["commit"])
    assert not (booted_root(sysroot) / PACKAGE).exists()
    human = atoll("status", *s).stdout
    assert "Rolled back" in human and "50-same-deployment.sh" in human
    health = json.loads(atoll("health", "status", *s, "--json").stdout)
    assert [h["outcome"] for h in health["history"]][-4:] == ["red", "red", "red", "green"]
    # The device's own update run does not stage the image it rolled back from again
    # (v2 is still what it follows): that would only boot it red three more times.
    etc = booted_root(sysroot) / "etc/atoll"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "updates.toml").write_text('policy = "stage"\n')
    run = json.loads(atoll("updates", "run", *s, "--json").stdout)
    assert run["outcome"] == "skipped", run
    assert "rolled back" in run["message"]
    assert status(sysroot)["status"]["staged"] is None

    atoll("switch", *s, f"oci:{images}:3")
    boot(2)
    assert booted_version(sysroot) == "3.0"
    assert (booted_root(sysroot) / PACKAGE).exists()
    assert status(sysroot)["status"]["booted"]["atoll"]["bootState"] == "good"


def directory_boot(sysroot: Path) -> Callable[[int], subprocess.CompletedProcess[str]]:
    def boot(max_boots: int) -> subprocess.CompletedProcess[str]:
        proc = atoll("boot", "--sysroot", str(sysroot), "--max-boots", str(max_boots), ok=False)
        assert proc.returncode == 0, proc.stderr
        return proc

    return boot


def test_directory_device(tmp_path: Path) -> None:
    images = tmp_path / "images"
    build_os_image(
        images, "1", version="1.0", add=busybox_files({f"{WANTED}/00-remember.sh": REMEMBER})
    )
    v2: dict[str, object] = busybox_files(
        {f"{WANTED}/00-remember.sh": REMEMBER, f"{REQUIRED}/50-same-deployment.sh": SAME_DEPLOYMENT}
    )
    v2[PACKAGE] = FileSpec(b"\x7fELF strace 2", 0o755)
    build_os_image(images, "2", version="2.0", add=v2)  # type: ignore[arg-type]
    v3: dict[str, object] = busybox_files(
        {f"{WANTED}/00-remember.sh": REMEMBER, f"{REQUIRED}/50-same-deployment.sh": FIXED}
    )
    v3[PACKAGE] = FileSpec(b"\x7fELF strace 3", 0o755)
    build_os_image(images, "3", version="3.0", add=v3)  # type: ignore[arg-type]
    sysroot = tmp_path / "sysroot"
    run_scenario(sysroot, images, directory_boot(sysroot))


@pytest.mark.integration
@pytest.mark.slow
def test_container_boot_device(tmp_path: Path, debian_tree: Any) -> None:
    from atoll.units import install_atoll, install_units
    from helpers.debian import build_debian_image

    stage = tmp_path / "stage"
    install_atoll(stage)
    install_units(stage)
    common = tree_spec(stage)

    def checks(extra: dict[str, str]) -> dict[str, object]:
        spec: dict[str, object] = dict(common)
        for path, body in {f"{WANTED}/00-remember.sh": REMEMBER, **extra}.items():
            spec[path] = FileSpec(f"#!/bin/sh\n{body}".encode(), 0o755)
        return spec

    images = tmp_path / "images"
    build_debian_image(images, "1", debian_tree, version="1.0", add=checks({}), kernel=True)  # type: ignore[arg-type]
    v2 = checks({f"{REQUIRED}/50-same-deployment.sh": SAME_DEPLOYMENT})
    v2[PACKAGE] = FileSpec(b"\x7fELF strace 2", 0o755)
    build_debian_image(images, "2", debian_tree, version="2.0", add=v2, kernel=True)  # type: ignore[arg-type]
    v3 = checks({f"{REQUIRED}/50-same-deployment.sh": FIXED})
    v3[PACKAGE] = FileSpec(b"\x7fELF strace 3", 0o755)
    build_debian_image(images, "3", debian_tree, version="3.0", add=v3, kernel=True)  # type: ignore[arg-type]
    sysroot = tmp_path / "sysroot"
    console = tmp_path / "console.log"

    def boot(max_boots: int) -> subprocess.CompletedProcess[str]:
        proc = atoll(
            "device",
            "boot",
            "--sysroot",
            str(sysroot),
            "--max-boots",
            str(max_boots),
            "--timeout",
            "90",
            "--console-log",
            str(console),
            ok=False,
        )
        assert proc.returncode == 0, proc.stderr + console.read_text()[-3000:]
        return proc

    run_scenario(sysroot, images, boot)
