"""ostree as the oracle: the same single-layer image imported by atoll and committed
by ``ostree commit --tree=tar=`` into a bare repository checks out to the same tree.

Compared: every path, its type, mode (setuid, setgid and sticky included), owner,
xattrs, content and symlink target, and which paths are hardlinks of each other.
Not compared: mtimes (both set 0 on files; directories get the checkout time).
No difference was found in ownership or xattrs: as root in bare mode, ostree
2022.7 keeps the archive's owners and its SCHILY.xattr attributes, as atoll does.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from atoll.store import Store
from helpers.parts import require_tool
from helpers.stores import import_image, walk
from helpers.treeimage import (
    Node,
    build_tree_image,
    directory,
    hardlink,
    image_from_tars,
    symlink,
)

pytestmark = pytest.mark.integration

RICH = {
    "usr/bin/su": Node(content=b"su", mode=0o4755),
    "usr/bin/wall": Node(content=b"wall", mode=0o2755, gid=5),
    "usr/bin/h": hardlink("usr/bin/su"),
    "tmp": directory(0o1777),
    "home/u": directory(0o700, uid=1000, gid=1000),
    "home/u/f": Node(content=b"x" * 5000, uid=1000, gid=100, mode=0o640),
    "usr/lib/a": Node(content=b"a", xattrs={"user.foo": b"bar", "trusted.t": b"1"}),
    "usr/lib/empty": b"",
    "usr/lib/big": os.urandom(3 << 20),
    "lib": symlink("usr/lib"),
    "usr/lib/dangling": symlink("/nowhere/at/all"),
    "srv/dir": directory(0o711, xattrs={"user.d": b"dir"}),
    "usr/share/\u00e9t\u00e9 name with spaces": "unicode\n",
}


def _links(root: Path) -> set[frozenset[str]]:
    """Groups of paths that are one inode (hardlinks inside the tree)."""
    by_inode: dict[int, set[str]] = {}
    for path, _info in walk(root).items():
        st = os.lstat(root / path)
        if not (root / path).is_dir() or (root / path).is_symlink():
            by_inode.setdefault(st.st_ino, set()).add(path)
    return {frozenset(g) for g in by_inode.values() if len(g) > 1}


def _host_tree_layer(tmp_path: Path) -> bytes:
    source = Path("/usr/share/zoneinfo")
    if not source.is_dir():
        pytest.skip("/usr/share/zoneinfo is not here (apt-get install tzdata)")
    out = tmp_path / "host.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname="usr/share/zoneinfo")
    return out.read_bytes()


@pytest.mark.parametrize("case", ["rich", "host"])
def test_atoll_and_ostree_check_out_the_same_tree(tmp_path: Path, store: Store, case: str) -> None:
    ostree = require_tool("ostree")
    if case == "rich":
        image = build_tree_image(tmp_path / "img", [RICH], compression="none")
        layer = image.tars[0]
    else:
        layer = _host_tree_layer(tmp_path)
        image = image_from_tars(tmp_path / "img", [layer], compression="none")
    tar_path = tmp_path / "layer.tar"
    tar_path.write_bytes(layer)

    repo = tmp_path / "repo"
    subprocess.run([ostree, "init", f"--repo={repo}", "--mode=bare"], check=True)
    subprocess.run(
        [
            ostree,
            "commit",
            f"--repo={repo}",
            "--branch=b",
            f"--tree=tar={tar_path}",
            "--tar-autocreate-parents",
        ],
        check=True,
        capture_output=True,
    )
    theirs = tmp_path / "ostree-checkout"
    subprocess.run([ostree, "checkout", f"--repo={repo}", "b", str(theirs)], check=True)

    commit = import_image(store, image).commit_id
    ours = tmp_path / "atoll-checkout"
    store.checkout(commit, ours, copy_paths=())

    mine, other = walk(ours), walk(theirs)
    assert sorted(mine) == sorted(other)
    differing = {p: (mine[p], other[p]) for p in mine if mine[p] != other[p]}
    assert differing == {}
    assert _links(ours) == _links(theirs)
    assert len(mine) > (1300 if case == "host" else 15)
