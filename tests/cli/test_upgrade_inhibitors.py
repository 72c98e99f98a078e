"""`atoll upgrade --apply` and reboot inhibitors (needs the host.py change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.cli.main import main
from helpers.osimage import build_os_image
from helpers.updates import write_config


def test_upgrade_apply_refuses_while_inhibited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "s", version="1.0")
    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:s"]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    capsys.readouterr()
    assert main(["status", "--sysroot", str(sysroot), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    root = (
        sysroot
        / "atoll/deploy/default/deploy"
        / (doc["status"]["booted"]["atoll"]["commit"] + ".0")
    )
    write_config(root, '[inhibitors]\nfiles = ["/run/busy"]\n')
    (root / "run").mkdir(exist_ok=True)
    (root / "run/busy").touch()
    build_os_image(images, "s", version="2.0")
    assert main(["upgrade", "--sysroot", str(sysroot), "--apply"]) == 48
    err = capsys.readouterr().err
    assert "reboot inhibited by /run/busy (exists)" in err, err
    assert main(["status", "--sysroot", str(sysroot), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["staged"] is None  # nothing fetched
    assert main(["upgrade", "--sysroot", str(sysroot), "--apply", "--force"]) == 0
    assert "Ignoring reboot inhibitor /run/busy (exists) (--force)" in capsys.readouterr().err
    assert main(["status", "--sysroot", str(sysroot), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["booted"]["image"]["version"] == "2.0"
