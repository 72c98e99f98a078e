"""Checkouts: hardlinks into the store, copies where they must be, incremental updates."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError, NotFoundError, StoreCorruptError
from atoll.store import Store
from helpers.stores import import_image, walk
from helpers.treeimage import (
    WHITEOUT,
    Node,
    build_tree_image,
    directory,
    hardlink,
    symlink,
)

BASE = {
    "usr/bin/tool": Node(content=b"#!/bin/sh\necho tool\n", mode=0o755),
    "usr/bin/sudo": Node(content=b"sudo", mode=0o4755),
    "usr/bin/tool2": hardlink("usr/bin/tool"),
    "usr/lib/libx.so.1": Node(content=b"ELF" * 100, mode=0o755),
    "usr/lib/libx.so": symlink("libx.so.1"),
    "usr/share/doc/a/copyright": "a",
    "usr/share/doc/b/copyright": "b",
    "etc/passwd": "root:x:0:0::/root:/bin/sh\n",
    "etc/ssh/sshd_config": Node(content=b"PermitRootLogin no\n", mode=0o600),
    "etc/motd": symlink("../usr/share/motd"),
    "usr/share/motd": "hello\n",
    "var/lib/app": directory(0o750, uid=100, gid=100, xattrs={"user.kind": b"state"}),
    "home": directory(0o755),
    "opt/app/data": Node(content=b"d", uid=1000, gid=1000, xattrs={"user.x": b"y"}),
}


def _commit(store: Store, tmp_path: Path, layers: list[dict[str, object]], ref: str) -> str:
    image = build_tree_image(tmp_path / "images", layers, ref=ref)  # type: ignore[arg-type]
    return import_image(store, image).commit_id


def test_files_are_hardlinks_to_objects_except_copy_paths(tmp_path: Path, store: Store) -> None:
    commit = _commit(store, tmp_path, [BASE], "1")
    dest = tmp_path / "deploy"
    stats = store.checkout(commit, dest)
    for path in ("usr/bin/tool", "usr/bin/tool2", "usr/lib/libx.so", "usr/share/motd"):
        entry = store.lookup(commit, path)
        assert entry is not None
        obj = store.object_path(entry.object_id)
        assert os.lstat(dest / path).st_ino == os.lstat(obj).st_ino, path
    for path in ("etc/passwd", "etc/ssh/sshd_config", "etc/motd"):
        entry = store.lookup(commit, path)
        assert entry is not None
        assert os.lstat(dest / path).st_ino != os.lstat(store.object_path(entry.object_id)).st_ino
    assert stats.copied == 3 and stats.hardlinked == stats.files - 3
    # Editing /etc in place leaves the store alone.
    (dest / "etc/passwd").write_text("edited\n")
    assert store.read_file(commit, "etc/passwd").startswith(b"root:")
    assert store.fsck().ok


def test_copies_and_links_look_the_same(tmp_path: Path, store: Store) -> None:
    commit = _commit(store, tmp_path, [BASE], "1")
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    store.checkout(commit, linked, copy_paths=())
    store.checkout(commit, copied, copy_paths=("usr", "etc", "var", "home", "opt"))
    assert walk(linked) == walk(copied)
    assert os.lstat(linked / "usr/bin/tool").st_mtime == 0
    assert os.lstat(copied / "usr/bin/tool").st_mtime == 0


def test_checkout_into_an_existing_path_is_refused(tmp_path: Path, store: Store) -> None:
    commit = _commit(store, tmp_path, [BASE], "1")
    dest = tmp_path / "deploy"
    dest.mkdir()
    with pytest.raises(InvalidInputError, match="already exists"):
        store.checkout(commit, dest)
    assert list(dest.iterdir()) == []


def test_a_failed_checkout_leaves_nothing(tmp_path: Path, store: Store) -> None:
    commit = _commit(store, tmp_path, [BASE], "1")
    entry = store.lookup(commit, "usr/share/doc/b/copyright")
    assert entry is not None
    store.object_path(entry.object_id).unlink()
    dest = tmp_path / "deploy"
    with pytest.raises(StoreCorruptError, match=f"lacks file object {entry.object_id}.*copyright"):
        store.checkout(commit, dest)
    assert not dest.exists()


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_another_file_system_gets_copies(tmp_path: Path, store: Store) -> None:
    commit = _commit(store, tmp_path, [BASE], "1")
    reference = tmp_path / "reference"
    store.checkout(commit, reference, copy_paths=())
    with tmpfs(tmp_path / "mnt") as mnt:
        dest = mnt / "deploy"
        stats = store.checkout(commit, dest, copy_paths=())
        assert stats.hardlinked == 0 and stats.copied == stats.files
        assert walk(dest) == walk(reference)
        entry = store.lookup(commit, "usr/bin/tool")
        assert entry is not None
        assert (
            os.lstat(dest / "usr/bin/tool").st_dev
            != os.lstat(store.object_path(entry.object_id)).st_dev
        )


def _version(rng: random.Random, n: int) -> dict[str, object]:
    return {
        **BASE,
        **{f"usr/share/data/{d}/f{i}": rng.randbytes(64) for d in range(8) for i in range(n)},
    }


def test_incremental_checkout_equals_a_fresh_one_and_touches_only_changes(
    tmp_path: Path, store: Store
) -> None:
    rng = random.Random(7)
    v1 = _version(rng, 10)
    v2 = dict(v1)
    v2["usr/share/data/3/f4"] = b"changed content"
    v2["usr/share/data/3/new"] = b"added"
    del v2["usr/share/data/5/f0"]
    v2["usr/bin/tool"] = Node(content=b"#!/bin/sh\necho tool v2\n", mode=0o755)
    v2["usr/bin/tool2"] = hardlink("usr/bin/tool")
    v2["usr/lib/libx.so"] = symlink("libx.so.2")
    v2["usr/lib/libx.so.2"] = Node(content=b"ELF2", mode=0o755)
    v2["var/lib/app"] = directory(0o700, uid=100, gid=100, xattrs={"user.kind": b"v2"})
    v2["usr/share/doc/a"] = "a is now a file"
    del v2["usr/share/doc/a/copyright"]
    v2["etc/passwd"] = "root:x:0:0::/root:/bin/bash\n"
    del v2["opt/app/data"]
    # The second version arrives as one more layer, as an update would.
    layer2 = {k: v for k, v in v2.items() if v1.get(k) != v}
    layer2.update({"usr/share/data/5/f0": WHITEOUT, "opt/app/data": WHITEOUT})
    layer2.update({"usr/share/doc/a": "a is now a file"})
    old = _commit(store, tmp_path, [v1], "1")
    new = _commit(store, tmp_path, [v1, layer2], "2")

    fresh = tmp_path / "fresh"
    store.checkout(new, fresh)
    old_dir = tmp_path / "old"
    store.checkout(old, old_dir)
    (old_dir / "etc/passwd").write_text("local edit that the new /etc does not keep\n")
    before = {
        p: os.lstat(old_dir / p)
        for p in ("usr/share/data/0/f0", "usr/share/data/3/f0", "usr/bin/sudo")
    }
    dir_times = {
        p: os.lstat(old_dir / p).st_mtime_ns for p in ("usr/share/data/0", "usr/share/data/7")
    }

    dest = tmp_path / "incremental"
    stats = store.checkout(new, dest, reuse=(old_dir, old))

    assert not old_dir.exists()
    assert walk(dest) == walk(fresh)
    assert stats.incremental
    # Unchanged files are the very same directory entries; untouched directories
    # were not written to.
    for path, st in before.items():
        assert os.lstat(dest / path).st_ino == st.st_ino
    for path, mtime in dir_times.items():
        assert os.lstat(dest / path).st_mtime_ns == mtime
    # Work done: the changed files and the copy of /etc, not the 80 data files.
    assert stats.files < 20
    assert stats.kept_subtrees >= 6


def test_incremental_checkout_failure_consumes_the_old_tree(tmp_path: Path, store: Store) -> None:
    old = _commit(store, tmp_path, [BASE], "1")
    new = _commit(store, tmp_path, [{**BASE, "usr/bin/new": "n"}], "2")
    old_dir = tmp_path / "old"
    store.checkout(old, old_dir)
    entry = store.lookup(new, "usr/bin/new")
    assert entry is not None
    store.object_path(entry.object_id).unlink()
    dest = tmp_path / "new"
    with pytest.raises(StoreCorruptError, match="'new'"):
        store.checkout(new, dest, reuse=(old_dir, old))
    assert not dest.exists() and not old_dir.exists()


def test_checkout_subtree_copies(tmp_path: Path, store: Store) -> None:
    commit = _commit(store, tmp_path, [BASE], "1")
    dest = tmp_path / "etc-copy"
    store.checkout_subtree(commit, "etc", dest)
    full = tmp_path / "full"
    store.checkout(commit, full)
    expected = {k.removeprefix("etc/"): v for k, v in walk(full / "etc").items()}
    assert walk(dest) == expected
    entry = store.lookup(commit, "etc/passwd")
    assert entry is not None
    assert os.lstat(dest / "passwd").st_ino != os.lstat(store.object_path(entry.object_id)).st_ino
    var = tmp_path / "var"
    store.checkout_subtree(commit, "var", var)
    assert dict(walk(var)["lib/app"][4]) == {"user.kind": b"state"}
    with pytest.raises(NotFoundError):
        store.checkout_subtree(commit, "srv", tmp_path / "srv")
    with pytest.raises(InvalidInputError):
        store.checkout_subtree(commit, "etc/passwd", tmp_path / "x")
