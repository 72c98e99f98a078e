"""A directory device driven through ``atoll.cli.main`` in the test process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from helpers.osimage import build_os_image


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``atoll ARGS``: exit code, stdout, stderr (earlier output is discarded)."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def status(capsys: pytest.CaptureFixture[str], sysroot: Path) -> dict[str, Any]:
    code, out, err = run(capsys, "status", "--sysroot", str(sysroot), "--format", "json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def booted_version(capsys: pytest.CaptureFixture[str], sysroot: Path) -> str:
    version: str = status(capsys, sysroot)["status"]["booted"]["image"]["version"]
    return version


def installed_device(tmp_path: Path) -> tuple[Path, Path]:
    """Images 1 (1.0) and 2 (2.0, one file more) in ``tmp_path/images``; a
    sysroot at ``tmp_path/sysroot`` with 1 installed and booted."""
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    build_os_image(images, "2", version="2.0", add={"usr/bin/new": b"two"})
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    return images, sysroot
