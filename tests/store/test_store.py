"""Opening stores, refs, locking and reading commits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from atoll.errors import (
    InvalidInputError,
    LockedError,
    NotFoundError,
    StoreVersionError,
)
from atoll.store import STORE_VERSION, EntryKind, Store
from helpers.stores import import_image
from helpers.treeimage import Node, build_tree_image, symlink


def test_create_is_idempotent_and_open_needs_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with pytest.raises(NotFoundError, match="no object store"):
        Store.open(path)
    Store.create(path)
    (path / "refs" / "keep").write_text("x" * 64)
    again = Store.create(path)
    assert (again.path / "refs" / "keep").exists()
    assert json.loads((path / "store.json").read_text()) == {
        "format": "atoll-store",
        "version": STORE_VERSION,
    }
    assert len(list((path / "objects").iterdir())) == 256


def test_a_store_from_a_newer_atoll_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.create(path)
    (path / "store.json").write_text(json.dumps({"format": "atoll-store", "version": 99}))
    with pytest.raises(StoreVersionError) as caught:
        Store.open(path)
    assert caught.value.exit_code == 33
    assert "version 99" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(StoreVersionError):
        Store.create(path)


def test_refs(tmp_path: Path, store: Store) -> None:
    commit = import_image(store, build_tree_image(tmp_path / "img", [{"a": "x"}])).commit_id
    assert store.ref("images/default") is None
    store.set_ref("images/default", commit)
    store.set_ref("deploy/default/0", commit)
    assert store.ref("images/default") == commit
    assert store.refs() == {"deploy/default/0": commit, "images/default": commit}
    store.set_ref("deploy/default/0", None)
    assert store.refs() == {"images/default": commit}
    assert not (store.path / "refs" / "deploy").exists()
    for bad in ("", "/abs", "a/../b", "a//b", ".hidden", "a/.b", "sp ace", "a\nb"):
        with pytest.raises(InvalidInputError):
            store.set_ref(bad, commit)
    with pytest.raises(NotFoundError):
        store.set_ref("images/other", "0" * 64)
    with pytest.raises(InvalidInputError):
        store.set_ref("images/other", "not-a-commit")


def test_lock_is_exclusive_between_processes_and_reentrant_within_one(
    tmp_path: Path, store: Store
) -> None:
    holder = (
        "import sys, time; from pathlib import Path; from atoll.store import Store\n"
        "s = Store.open(Path(sys.argv[1]))\n"
        "with s.lock(shared=sys.argv[2] == 'shared'):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    for mode in ("exclusive", "shared"):
        proc = subprocess.Popen(
            [sys.executable, "-c", holder, str(store.path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            with pytest.raises(LockedError, match="in use"), store.lock(wait=False):
                pass
            if mode == "shared":
                with store.lock(shared=True, wait=False):
                    pass
        finally:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.close()
            proc.wait(timeout=10)
    with store.lock(), store.lock(shared=True), store.lock():
        pass
    with store.lock(wait=False):
        pass
    # Re-entrant within a thread even through another Store object; not across threads.
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with Store.open(store.path).lock(shared=True, wait=False):
                pass
        except BaseException as exc:
            errors.append(exc)

    with store.lock(), Store.open(store.path).lock(wait=False):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], LockedError)


def test_lookup_list_dir_and_read_file(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [
            {
                "usr/lib/os-release": "ID=atoll\n",
                "usr/bin/sh": Node(content=b"#!", mode=0o755, uid=0, gid=0),
                "bin": symlink("usr/bin"),
                "etc/os-release": symlink("../usr/lib/os-release"),
                "etc/loop": symlink("loop"),
            }
        ],
    )
    commit = import_image(store, image).commit_id
    root = store.lookup(commit, "")
    assert root is not None and root.kind is EntryKind.DIR
    sh = store.lookup(commit, "bin/sh")  # through the symlink, inside the commit
    assert sh is not None and sh.path == "usr/bin/sh" and sh.mode == 0o755 and sh.size == 2
    link = store.lookup(commit, "etc/os-release")
    assert link is not None and link.kind is EntryKind.SYMLINK
    assert link.target == "../usr/lib/os-release"
    assert store.read_file(commit, "etc/os-release") == b"ID=atoll\n"
    assert store.lookup(commit, "usr/nothing") is None
    assert store.lookup(commit, "usr/bin/sh/x") is None
    assert store.lookup(commit, "etc/loop", follow=True) is None
    assert [e.name for e in store.list_dir(commit, "etc")] == ["loop", "os-release"]
    assert [e.kind for e in store.list_dir(commit, "")] == [
        EntryKind.SYMLINK,
        EntryKind.DIR,
        EntryKind.DIR,
    ]
    with pytest.raises(NotFoundError):
        store.list_dir(commit, "nowhere")
    with pytest.raises(InvalidInputError):
        store.read_file(commit, "usr/bin")
    with pytest.raises(NotFoundError):
        store.commit("f" * 64)


def test_kernel(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [
            {
                "usr/lib/modules/6.1.0-9/vmlinuz": b"old kernel",
                "usr/lib/modules/6.1.0-10/vmlinuz": b"new kernel",
                "usr/lib/modules/6.1.0-10/initramfs.img": b"initramfs",
                "usr/lib/modules/6.1.0-11/modules.dep": b"no kernel here",
            }
        ],
        ref="k",
    )
    commit = import_image(store, image).commit_id
    info = store.kernel(commit)
    assert info is not None and info.kver == "6.1.0-10"
    assert info.vmlinuz.read_bytes() == b"new kernel"
    assert info.initramfs is not None and info.initramfs.read_bytes() == b"initramfs"
    bare = import_image(store, build_tree_image(tmp_path / "img", [{"a": "x"}], ref="n"))
    assert store.kernel(bare.commit_id) is None


def test_ls(tmp_path: Path, store: Store) -> None:
    one = build_tree_image(
        tmp_path / "img", [{"a": "1"}], ref="1", labels={"org.opencontainers.image.version": "1.0"}
    )
    two = build_tree_image(
        tmp_path / "img",
        [{"a": "2"}],
        ref="2",
        labels={"org.opencontainers.image.version": "2.0"},
        created="2026-02-01T00:00:00Z",
    )
    c1 = import_image(store, one, ref="images/default").commit_id
    c2 = import_image(store, two, ref="images/default").commit_id
    store.set_ref("pinned", c1)
    listing = store.ls()
    assert [(i.commit.id, i.commit.version, i.refs) for i in listing] == [
        (c2, "2.0", ("images/default",)),
        (c1, "1.0", ("pinned",)),
    ]
    assert listing[0].to_json()["image"] == two.name
