"""GRUB's environment block: atoll's reader and writer against GRUB's own grub-editenv."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from atoll.errors import BootloaderError
from atoll.sysroot.bootloader.grubenv import (
    ENVBLK_SIZE,
    format_grubenv,
    parse_grubenv,
    read_grubenv,
    update_grubenv,
)
from helpers.parts import require_tool


def test_format_is_1024_bytes_padded_and_reads_back() -> None:
    data = format_grubenv({"boot_counter": "3", "boot_success": "0"})
    assert len(data) == ENVBLK_SIZE
    assert data.startswith(b"# GRUB Environment Block\nboot_counter=3\nboot_success=0\n#")
    assert data.rstrip(b"#").endswith(b"\n")
    assert parse_grubenv(data) == {"boot_counter": "3", "boot_success": "0"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("boot counter", "1"), ("1st", "1"), ("x", "a\\b"), ("x", "a\nb"), ("x", "é")],
)
def test_bad_names_and_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(BootloaderError):
        format_grubenv({name: value})


def test_too_many_variables_are_refused() -> None:
    with pytest.raises(BootloaderError, match="more than 1024"):
        format_grubenv({f"v{i}": "x" * 40 for i in range(30)})


def test_a_file_that_is_not_an_environment_block_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(b"boot_counter=3\n")
    with pytest.raises(BootloaderError, match="no signature"):
        read_grubenv(path)
    path.write_bytes(format_grubenv({})[:-1])
    with pytest.raises(BootloaderError, match="1023 bytes"):
        read_grubenv(path)


def test_update_without_grub_editenv(tmp_path: Path) -> None:
    path = tmp_path / "grub" / "grubenv"
    path.parent.mkdir()
    assert read_grubenv(path) == {}
    assert update_grubenv(path, {"boot_counter": "3", "boot_success": "0"}, editenv="") == {
        "boot_counter": "3",
        "boot_success": "0",
    }
    update_grubenv(path, {"boot_success": "1"}, ["boot_counter"], editenv="")
    assert read_grubenv(path) == {"boot_success": "1"}
    assert [p.name for p in path.parent.iterdir()] == ["grubenv"]  # no temporary left


def test_grub_editenv_and_atoll_read_each_others_blocks(tmp_path: Path) -> None:
    editenv = require_tool("grub-editenv", "grub-common")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for path, tool in ((ours, ""), (theirs, editenv)):
        update_grubenv(path, {"saved_entry": "atoll-default-1", "boot_counter": "3"}, editenv=tool)
        written = update_grubenv(path, {"boot_success": "0"}, ["saved_entry"], editenv=tool)
        assert written == {"boot_counter": "3", "boot_success": "0"}
        assert path.stat().st_size == ENVBLK_SIZE
    # grub-editenv adds a warning comment line; the variables are the same.
    assert read_grubenv(theirs) == read_grubenv(ours)
    listed = subprocess.run(
        [editenv, str(ours), "list"], capture_output=True, text=True, check=True
    ).stdout
    assert listed.splitlines() == ["boot_counter=3", "boot_success=0"]


def test_grub_editenv_failure_leaves_the_old_block(tmp_path: Path) -> None:
    path = tmp_path / "grub" / "grubenv"
    path.parent.mkdir()
    update_grubenv(path, {"boot_success": "1"}, editenv="")
    before = path.read_bytes()
    with pytest.raises(Exception, match="false"):
        update_grubenv(path, {"boot_counter": "3"}, editenv="/bin/false")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["grubenv"]
