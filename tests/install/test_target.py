"""Choosing the target disk (atoll.install.target) from a /sys/block tree laid
out as the kernel lays it out: the installer takes the one disk the rules
match, never its own medium, and refuses to guess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.errors import InstallTargetError
from atoll.install.config import DiskRules
from atoll.install.target import Disk, choose_disk, device_of, list_disks

GIB = 1 << 30


def add_disk(
    sys_block: Path, name: str, size: int, dev: str, *, model: str = "", parts: int = 0
) -> None:
    disk = sys_block / name
    (disk / "device").mkdir(parents=True)
    (disk / "size").write_text(f"{size // 512}\n")
    (disk / "dev").write_text(f"{dev}\n")
    (disk / "ro").write_text("0\n")
    if model:
        (disk / "device/model").write_text(f"{model}   \n")
    major, minor = dev.split(":")
    for n in range(1, parts + 1):
        part = disk / f"{name}{n}"
        part.mkdir()
        (part / "partition").write_text(f"{n}\n")
        (part / "dev").write_text(f"{major}:{int(minor) + n}\n")


@pytest.fixture
def sys_block(tmp_path: Path) -> Path:
    root = tmp_path / "block"
    add_disk(root, "vda", GIB // 2, "254:0", parts=4)  # the installer's medium
    add_disk(root, "vdb", 16 * GIB, "254:16", model="QEMU HARDDISK")
    add_disk(root, "sda", 64 * GIB, "8:0", model="Samsung SSD 870")
    add_disk(root, "loop0", 8 * GIB, "7:0")
    add_disk(root, "sr0", GIB, "11:0")
    add_disk(root, "vdz", 8 * GIB, "254:32")
    (root / "vdz/ro").write_text("1\n")
    return root


def test_disks_are_listed_with_size_model_and_partitions(sys_block: Path) -> None:
    disks = {d.path.name: d for d in list_disks(sys_block)}
    assert sorted(disks) == ["sda", "vda", "vdb"]  # no loop, optical or read-only disk
    assert disks["vdb"] == Disk(Path("/dev/vdb"), 16 * GIB, "QEMU HARDDISK", frozenset({"254:16"}))
    assert disks["vda"].devices == {"254:0", "254:1", "254:2", "254:3", "254:4"}


@pytest.mark.parametrize(
    ("rules", "chosen"),
    [
        (DiskRules(model="QEMU*"), "vdb"),
        (DiskRules(min_size=32 * GIB), "sda"),
        (DiskRules(max_size=32 * GIB), "vdb"),
        (DiskRules(path="/dev/sda"), "sda"),
        (DiskRules(model="Samsung*", min_size=60 * GIB, max_size=2048 * GIB), "sda"),
    ],
)
def test_the_one_matching_disk_is_chosen(sys_block: Path, rules: DiskRules, chosen: str) -> None:
    # The medium (its partition 4 holds /) matches every size rule here and is never taken.
    disk = choose_disk(rules, list_disks(sys_block), exclude="254:4")
    assert disk.path == Path("/dev") / chosen


def test_two_matching_disks_are_refused(sys_block: Path) -> None:
    with pytest.raises(InstallTargetError) as caught:
        choose_disk(DiskRules(min_size=8 * GIB), list_disks(sys_block), exclude="254:4")
    assert caught.value.exit_code == 112
    assert "2 disks match the install config (at least 8589934592 bytes)" in str(caught.value)
    assert "/dev/vdb" in str(caught.value) and "/dev/sda" in str(caught.value)
    assert "does not guess" in str(caught.value)


def test_no_matching_disk_is_refused_naming_those_seen(sys_block: Path) -> None:
    with pytest.raises(InstallTargetError) as caught:
        choose_disk(DiskRules(model="NVMe*"), list_disks(sys_block), exclude="254:4")
    message = str(caught.value)
    assert message.startswith("no disk matches the install config (model 'NVMe*')")
    assert "/dev/vdb (17179869184 bytes 'QEMU HARDDISK')" in message
    assert "/dev/vda" not in message  # the medium is not a candidate


def test_the_medium_alone_is_no_target(tmp_path: Path) -> None:
    root = tmp_path / "block"
    add_disk(root, "vda", 8 * GIB, "254:0", parts=4)
    with pytest.raises(InstallTargetError, match="disks seen: none"):
        choose_disk(DiskRules(), list_disks(root), exclude="254:4")


def test_device_of_names_the_file_systems_device(tmp_path: Path) -> None:
    st = tmp_path.stat()
    assert device_of(tmp_path) == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert device_of(tmp_path / "missing") == ""
