"""README.md's quick start, run line by line in a shell against a local
registry: the example hosts become repositories of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docs.docblocks import find_block
from helpers.images import build_image
from helpers.registry import RegistryView

#: The block's first command, as README.md writes it.
FIRST = "atoll image copy docker://registry.example.com/os/edge:1.4 oci:/media/usb/os:1.4"


@pytest.mark.integration
def test_readme_quick_start(tmp_path: Path, registry: RegistryView) -> None:
    block = find_block("README.md", FIRST)
    host = registry.host
    names = {
        "registry.example.com": host,
        "quay.io": f"{host}/quay",
        "mirror.lan:5000": f"{host}/mirror",
        "/media/usb": str(tmp_path / "usb"),
        "/srv/offline": str(tmp_path / "offline"),
    }
    for ref, repo, seed in (
        ("1.4", "os/edge", "a"),
        ("old", "os/edge", "b"),  # another image: deleting it leaves 1.4
        ("2", "quay/org/app", "c"),
    ):
        image = build_image(tmp_path / f"src-{seed}", ref, seed=seed)
        registry.skopeo(
            "copy",
            "-q",
            *registry.skopeo_args("dest"),
            f"oci:{image.layout}:{ref}",
            f"docker://{host}/{repo}:{ref}",
        )
    # The files the block reads: a sync list in skopeo's format, and a token.
    (tmp_path / "mirror.yaml").write_text(f"{host}:\n  images:\n    quay/org/app: []\n")
    (tmp_path / "token.txt").write_text("any\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "atoll").write_text(f'#!/bin/sh\nexec {sys.executable} -m atoll "$@"\n')
    (bin_dir / "atoll").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for written in block.commands():
        command = written
        for doc_name, real in names.items():
            command = command.replace(doc_name, real)
        proc = subprocess.run(
            ["sh", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr}"
    assert (tmp_path / "usb/os/index.json").is_file()
    assert any((tmp_path / "offline").iterdir())
    # The sync line's comment: the last path component of the source under the mirror.
    registry.skopeo("inspect", *registry.skopeo_args(), f"docker://{host}/mirror/edge:1.4")
