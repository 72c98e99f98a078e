"""``atoll boot`` (the directory device) checks that it can run the health
checks before it counts a boot attempt: a harness that cannot chroot is not a
failed boot of the device."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.device import installed_device, run, status
from helpers.osimage import build_os_image


def test_no_permission_to_chroot_spends_no_attempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, sysroot = installed_device(tmp_path)
    build_os_image(images, "2", version="2.0")
    assert run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")[0] == 0
    before = sysroot.joinpath("atoll/run/booted.json").read_bytes()
    entries = sorted(p.name for p in (sysroot / "boot").rglob("*.conf"))
    # Stands in for a user who is not root (the tests run as root; a mock of
    # the uid only, the sysroot and the checks are real).
    monkeypatch.setattr("atoll.health.runner.os.geteuid", lambda: 1000)
    code, _, err = run(capsys, "boot", "--sysroot", str(sysroot))
    assert code == 47, err
    assert "needs root" in err
    assert sysroot.joinpath("atoll/run/booted.json").read_bytes() == before
    assert sorted(p.name for p in (sysroot / "boot").rglob("*.conf")) == entries
    doc = status(capsys, sysroot)["status"]
    assert doc["staged"]["image"]["version"] == "2.0"
    assert doc["booted"]["image"]["version"] == "1.0"
