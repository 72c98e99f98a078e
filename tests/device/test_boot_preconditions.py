"""``atoll device boot`` checks everything it can before it changes anything:
an image that cannot boot as a container, or a harness that cannot start,
leaves the staged deployment staged, the boot counters and the boot record as
they were (no finalize, no boot attempt spent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.device import harness
from atoll.errors import ContainerBootError, ToolMissingError
from atoll.oci.transports import ImageName
from atoll.sysroot.lifecycle import Device
from helpers.cli import run_atoll
from helpers.osimage import FileSpec, build_os_image

#: Enough for the harness's checks; these tests never start the container.
SYSTEMD = {"usr/lib/systemd/systemd": FileSpec(b"#!/bin/sh\n", 0o755)}


def snapshot(device: Device) -> dict[str, Any]:
    """Everything a boot attempt would change."""
    sysroot = device.sysroot
    booted = sysroot.booted_file
    return {
        "entries": sorted(p.name for p in sysroot.boot.rglob("*.conf")),
        "booted": booted.read_bytes() if booted.exists() else None,
        "staged": sysroot.staged_file.read_bytes() if sysroot.staged_file.exists() else None,
        "health": sorted(str(p) for p in (sysroot.meta / "health").rglob("*")),
    }


def device_with_staged(tmp_path: Path, new: dict[str, object]) -> Device:
    """1.0 (with systemd) booted on the directory device; 2.0 (*new*) staged."""
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0", add=SYSTEMD)  # type: ignore[arg-type]
    build_os_image(images, "2", version="2.0", add=new)  # type: ignore[arg-type]
    device = Device(tmp_path / "sysroot")
    device.install(ImageName.parse(f"oci:{images}:1"))
    device.boot()
    device.stage(ImageName.parse(f"oci:{images}:2"))
    assert device.state().staged is not None
    return device


def test_an_image_without_systemd_changes_nothing(tmp_path: Path) -> None:
    device = device_with_staged(tmp_path, {"usr/share/doc/new": "2"})
    before = snapshot(device)
    proc = run_atoll("device", "boot", "--sysroot", str(device.sysroot.root))
    assert proc.returncode == 45, proc.stderr
    assert "usr/lib/systemd/systemd" in proc.stderr
    assert snapshot(device) == before
    status = json.loads(
        run_atoll("status", "--sysroot", str(device.sysroot.root), "--json").stdout
    )["status"]
    assert status["staged"]["image"]["version"] == "2.0"
    assert status["booted"]["image"]["version"] == "1.0"
    assert status["booted"]["atoll"]["bootState"] == "good"


def test_a_missing_systemd_nspawn_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = device_with_staged(tmp_path, SYSTEMD)
    before = snapshot(device)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissingError):
        harness.run_boots(device, max_boots=1)
    assert snapshot(device) == before


def test_a_bad_option_changes_nothing(tmp_path: Path) -> None:
    device = device_with_staged(tmp_path, SYSTEMD)
    before = snapshot(device)
    proc = run_atoll("device", "boot", "--sysroot", str(device.sysroot.root), "--timeout", "0")
    assert proc.returncode != 0
    assert snapshot(device) == before


def test_a_harness_that_fails_to_start_spends_no_boot_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = device_with_staged(tmp_path, SYSTEMD)
    booted_before = device.sysroot.booted_file.read_bytes()

    def cannot_start(*args: object, **kwargs: object) -> object:
        # Stands in for an exec that fails after the checks (a mock: this
        # failure cannot be caused on purpose with the real systemd-nspawn).
        raise OSError(8, "Exec format error")

    monkeypatch.setattr("atoll.device.nspawn.run_with_console", cannot_start)
    with pytest.raises(OSError, match="Exec format error"):
        harness.run_boots(device, max_boots=1)
    state = device.state()
    # Finalizing is what the last shutdown would have done: 2.0 boots next ...
    assert state.staged is None
    new = state.default
    assert new is not None and new.origin.image_version == "2.0"
    entry = state.entry_for(new)
    # ... with all of its attempts, and 1.0 is still what booted last.
    assert entry is not None and (entry.tries_left, entry.tries_done) == (3, 0)
    assert device.sysroot.booted_file.read_bytes() == booted_before


def test_nothing_staged_and_no_systemd_in_the_booted_image(tmp_path: Path) -> None:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    device = Device(tmp_path / "sysroot")
    device.install(ImageName.parse(f"oci:{images}:1"))
    before = snapshot(device)
    with pytest.raises(ContainerBootError, match="usr/lib/systemd/systemd"):
        harness.run_boots(device, max_boots=1)
    assert snapshot(device) == before
