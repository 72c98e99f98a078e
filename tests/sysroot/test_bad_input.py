"""Bad images and a full disk: a clear error, its exit code, and a device that
still boots what it booted before."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.cli.main import main
from helpers.device import booted_version, run
from helpers.osimage import FileSpec, build_os_image


@pytest.fixture
def installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    capsys.readouterr()
    return images, sysroot


@pytest.mark.parametrize(
    ("add", "message"),
    [
        ({"usr/../../escape": b"x"}, "'..'"),
        ({"usr/bin/link": FileSpec(symlink="/etc"), "usr/bin/link/passwd": b"x"}, "symlink"),
    ],
)
def test_unsafe_layers_are_refused_and_nothing_is_staged(
    installed: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    add: dict[str, bytes | FileSpec],
    message: str,
) -> None:
    images, sysroot = installed
    build_os_image(images, "bad", version="6.6", add=dict(add))
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:bad")
    assert code == 14, err
    first = err.splitlines()[0]
    assert first.startswith("atoll: error:") and message in first
    code, out, _ = run(capsys, "status", "--sysroot", str(sysroot), "--format", "json")
    assert json.loads(out)["status"]["staged"] is None
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    assert booted_version(capsys, sysroot) == "1.0"


def test_switch_without_kernel_is_refused(
    installed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot = installed
    build_os_image(images, "nok", version="7.0", kernel=False)
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:nok")
    assert code == 41
    assert "no kernel" in err and "--allow-no-kernel" in err


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[None]:
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_while_staging_keeps_the_device_bootable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    build_os_image(images, "2", version="2.0", add={"usr/lib/big.bin": os.urandom(3 << 20)})
    sysroot = tmp_path / "sysroot"
    with tiny_filesystem(sysroot, "2m"):
        assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"]) == 0
        assert main(["boot", "--sysroot", str(sysroot)]) == 0
        capsys.readouterr()
        code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
        assert code == 30, err
        assert "no space left" in err.splitlines()[0]
        code, out, err = run(capsys, "store", "fsck", "--store", str(sysroot / "atoll/store"))
        assert code == 0, out + err
        assert main(["boot", "--sysroot", str(sysroot)]) == 0
        assert booted_version(capsys, sysroot) == "1.0"
        # Space freed: the leftovers go, and the device has what it had.
        assert main(["cleanup", "--sysroot", str(sysroot)]) == 0
