"""Partition layout files (atoll.build.disklayout): what they say, and each
mistake refused with the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.build.disklayout import (
    DiskLayout,
    Filesystem,
    PartitionSpec,
    load_layout,
    parse_layout,
    split_trees,
    write_fstab,
)
from atoll.errors import InvalidInputError

GOOD = """\
[root]
filesystem = "xfs"

[[partition]]
mount = "/var"
size = "2G"

[[partition]]
mount = "/var/lib/containers"
size = 8589934592
filesystem = "xfs"
"""


def test_a_layout_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "layout.toml"
    path.write_text(GOOD)
    assert load_layout(path) == DiskLayout(
        (
            PartitionSpec("/var", 2 << 30, Filesystem.EXT4),
            PartitionSpec("/var/lib/containers", 8 << 30, Filesystem.XFS),
        ),
        Filesystem.XFS,
    )
    assert parse_layout("") == DiskLayout()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[partition]]\nmount = "/var"\nsize = "2G"\nfs = "xfs"\n',
         "layout.toml: line 4: partition[0].fs: unknown key"),
        ('[[partition]]\nmount = "/var"\n', "layout.toml: line 1: partition[0]: no size"),
        ('[[partition]]\nmount = "/var"\n\nsize = "lots"\n',
         "layout.toml: line 4: partition[0].size: 'lots' is not a size"),
        ('[[partition]]\nmount = "/var"\nsize = -1\n',
         "layout.toml: line 3: partition[0].size: -1 is not a size"),
        ('[[partition]]\nmount = "/home"\nsize = "1G"\n',
         "layout.toml: line 2: partition[0].mount: '/home' is not /var or a directory under it"),
        ('[[partition]]\nmount = "/var/../etc"\nsize = "1G"\n',
         "line 2: partition[0].mount: '/var/../etc' is not /var"),
        ('[[partition]]\nmount = "/var"\nsize = "1G"\n'
         '[[partition]]\nmount = "/var/"\nsize = "1G"\n',
         "layout.toml: line 5: partition[1].mount: /var is given twice"),
        ('[root]\nfilesystem = "btrfs"\n',
         "layout.toml: line 2: root.filesystem: 'btrfs' is not a file system atoll makes"),
        ('partition = "var"\n', "layout.toml: line 1: partition: expected [[partition]] tables"),
        ("[[partition]\n", "layout.toml: line 1: not valid TOML"),
    ],
)  # fmt: skip
def test_mistakes_name_the_line(text: str, error: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        parse_layout(text, "layout.toml")
    assert error in err.value.message
    assert "\n" not in err.value.message


def test_partitions_take_their_trees_and_get_fstab_lines(tmp_path: Path) -> None:
    var = tmp_path / "sysroot/atoll/deploy/default/var"
    (var / "lib/containers/storage").mkdir(parents=True)
    (var / "lib/containers/storage/db").write_text("c")
    (var / "log").mkdir()
    (var / "log/boot").write_text("b")
    layout = parse_layout(GOOD)
    parts = split_trees(var, layout, tmp_path / "stage")
    assert [p.spec.mount for p in parts] == ["/var", "/var/lib/containers"]
    assert (parts[1].tree / "storage/db").read_text() == "c"
    assert (parts[0].tree / "log/boot").read_text() == "b"
    # The /var tree keeps an empty directory to mount the containers partition on.
    assert list((parts[0].tree / "lib/containers").iterdir()) == []
    assert list(var.iterdir()) == []  # the mount point for /var itself
    assert [p.label for p in parts] == ["var", "containers"]
    deployment = tmp_path / "deployment"
    (deployment / "etc").mkdir(parents=True)
    (deployment / "etc/fstab").write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM")
    write_fstab(deployment, parts, "default")
    lines = (deployment / "etc/fstab").read_text().splitlines()
    assert lines[0] == "# UNCONFIGURED FSTAB FOR BASE SYSTEM"
    entries = [line.split() for line in lines if line.startswith("UUID=")]
    assert entries == [
        [f"UUID={parts[0].uuid}", "/var", "ext4", "defaults", "0", "2"],
        [f"UUID={parts[0].uuid}", "/sysroot/atoll/deploy/default/var", "ext4", "defaults",
         "0", "0"],
        [f"UUID={parts[1].uuid}", "/var/lib/containers", "xfs", "defaults", "0", "2"],
        [f"UUID={parts[1].uuid}", "/sysroot/atoll/deploy/default/var/lib/containers", "xfs",
         "defaults", "0", "0"],
    ]  # fmt: skip
