"""The XFS root file system made from a prototype file (atoll.build.xfs), read
back with xfs_db and xfs_repair, never mounted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from atoll.build.xfs import make_xfs, write_protofile
from atoll.errors import DiskError
from helpers.parts import require_tool

MIB = 1024 * 1024
UUID = "0d4f3a52-8d0c-4b1e-9f3e-6b7c1f0a2e11"


def xfs_db(image: Path, *commands: str) -> str:
    args = [a for c in commands for a in ("-c", c)]
    return subprocess.run(
        ["xfs_db", "-r", *args, str(image)], capture_output=True, text=True, check=True
    ).stdout


def test_a_tree_becomes_an_xfs_file_system(tmp_path: Path) -> None:
    require_tool("mkfs.xfs", "xfsprogs")
    tree = tmp_path / "tree"
    (tree / "var/tmp").mkdir(parents=True)
    (tree / "var/tmp").chmod(0o1777)
    (tree / "usr/bin").mkdir(parents=True)
    helper = tree / "usr/bin/helper"
    helper.write_bytes(b"#!/bin/sh\n" + bytes(range(256)) * 64)
    helper.chmod(0o4755)
    (tree / "usr/bin/twin").hardlink_to(helper)
    (tree / "usr/bin/sh").symlink_to("dash")
    (tree / "usr/lib:amd64.list").write_text("a colon inside a name is fine\n")
    os.mkfifo(tree / "fifo", 0o600)
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as fh:
        fh.truncate(400 * MIB)
    (tmp_path / "stage").mkdir()
    make_xfs(disk, tree, offset=MIB, size=320 * MIB, uuid=UUID, label="atoll-root",
             staging=tmp_path / "stage")  # fmt: skip
    assert list((tmp_path / "stage").iterdir()) == []
    with disk.open("rb") as fh:
        assert fh.read(MIB) == bytes(MIB)  # nothing before the offset
    part = tmp_path / "part.xfs"
    subprocess.run(["dd", f"if={disk}", f"of={part}", "bs=1M", "skip=1", "count=320",
                    "conv=sparse", "status=none"], check=True)  # fmt: skip
    subprocess.run(["xfs_repair", "-n", "-f", str(part)], capture_output=True, check=True)
    assert f"UUID = {UUID}" in xfs_db(part, "uuid")
    assert 'label = "atoll-root"' in xfs_db(part, "label")
    modes = xfs_db(part, "path /var/tmp", "print core.mode", "path /usr/bin/helper",
                   "print core.mode", "path /usr/bin/sh", "print core.mode",
                   "path /fifo", "print core.mode")  # fmt: skip
    assert modes.split() == ["core.mode", "=", "041777", "core.mode", "=", "0104755",
                             "core.mode", "=", "0120777", "core.mode", "=", "010600"]  # fmt: skip
    # GRUB's own XFS driver reads it, as GRUB on the disk will.
    cfg = subprocess.run(
        ["grub-fstest", str(part), "cat", "/usr/bin/helper"], capture_output=True, check=True
    ).stdout
    assert cfg == helper.read_bytes()
    # A hard link is a file of its own there (prototype files cannot say otherwise).
    helper_ino = xfs_db(part, "path /usr/bin/helper", "print core.nlinkv2")
    assert helper_ino.split()[-1] == "1"


@pytest.mark.parametrize("name", ["a b", ":comment", "$", "tab\there"])
def test_a_name_a_prototype_file_cannot_carry_is_refused(tmp_path: Path, name: str) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / name).write_text("x")
    with pytest.raises(DiskError) as err:
        write_protofile(tree, tmp_path / "proto")
    assert err.value.message.startswith(f"/etc/{name}: ")
    assert "--rootfs ext4" in str(err.value.hint)
