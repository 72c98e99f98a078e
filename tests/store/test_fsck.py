"""fsck: objects changed behind the store's back are found, removed and fetched again."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import StoreCorruptError
from atoll.store import Store
from helpers.stores import import_image, walk
from helpers.treeimage import Node, TreeImage, build_tree_image

FILES = {
    "usr/bin/tool": Node(content=b"#!/bin/sh\necho tool\n", mode=0o755),
    "usr/lib/data": b"data" * 100,
    "usr/share/doc": b"doc",
    "etc/conf": b"conf",
}


def _setup(tmp_path: Path, store: Store) -> tuple[TreeImage, str, Path]:
    image = build_tree_image(tmp_path / "img", [FILES])
    commit = import_image(store, image, ref="images/default").commit_id
    deploy = tmp_path / "deploy"
    store.checkout(commit, deploy)
    return image, commit, deploy


def test_a_clean_store_is_clean(tmp_path: Path, store: Store) -> None:
    _setup(tmp_path, store)
    report = store.fsck()
    assert report.ok and report.objects_checked == 4 + 6 + 1  # files, trees, commit
    assert report.to_json()["problems"] == []


def test_edits_through_a_deployment_are_found_and_healed(tmp_path: Path, store: Store) -> None:
    image, commit, deploy = _setup(tmp_path, store)
    # A byte changed in place through the hardlink, and a chmod: both change objects.
    with (deploy / "usr/lib/data").open("r+b") as fh:
        fh.write(b"X")
    (deploy / "usr/bin/tool").chmod(0o777)
    data_id = store.lookup(commit, "usr/lib/data").object_id  # type: ignore[union-attr]
    tool_id = store.lookup(commit, "usr/bin/tool").object_id  # type: ignore[union-attr]

    report = store.fsck()
    assert not report.ok
    assert {(p.kind, p.object_id) for p in report.problems} == {
        ("file", data_id),
        ("file", tool_id),
    }
    assert report.commits_affected == (commit,)
    assert report.refs_affected == ("images/default",)
    assert store.has_object(data_id)  # no repair asked: nothing removed

    repaired = store.fsck(repair=True)
    assert repaired.repaired and set(repaired.removed) == {data_id, tool_id}
    assert repaired.partial_commits == (commit,)
    assert not store.has_object(data_id) and not store.has_object(tool_id)
    assert store.is_partial(commit)
    assert store.fsck().ok  # what is missing is known: the commit is marked partial
    with pytest.raises(StoreCorruptError, match="partial"):
        store.checkout(commit, tmp_path / "not-now")
    assert not (tmp_path / "not-now").exists()

    # A partial commit is not reused: the next import fetches what is missing.
    again = import_image(store, image, ref="images/default")
    assert again.commit_id == commit and not again.stats.reused
    assert again.stats.files_new == 2
    assert not store.is_partial(commit)
    fresh = tmp_path / "fresh"
    store.checkout(commit, fresh)
    assert (fresh / "usr/lib/data").read_bytes() == b"data" * 100
    assert store.fsck().ok and store.fsck().partial_commits == ()


def test_corrupt_trees_missing_objects_and_dangling_refs(tmp_path: Path, store: Store) -> None:
    image, commit, _ = _setup(tmp_path, store)
    tree = store.commit(commit).tree
    sub = store.tree(tree).dirs["usr"][0]
    store.object_path(sub, "tree").write_bytes(b'{"dirs":{},"files":{}}')
    doc = store.lookup(commit, "usr/share/doc").object_id  # type: ignore[union-attr]
    (store.path / "refs" / "broken").write_text("a" * 64 + "\n")
    (store.objects / "00" / "stray").write_text("not an object")

    report = store.fsck()
    kinds = {(p.kind, p.object_id) for p in report.problems}
    assert ("tree", sub) in kinds
    assert ("ref", "broken") in kinds
    assert ("stray", "objects/00/stray") in kinds
    assert report.commits_affected == (commit,)
    assert set(report.refs_affected) == {"broken", "images/default"}
    del doc

    store.fsck(repair=True)
    assert not store.object_path(sub, "tree").exists()
    assert not (store.objects / "00" / "stray").exists()
    import_image(store, image)
    assert set(store.tree(sub).dirs) == {"bin", "lib", "share"}
    final = store.fsck()
    assert [p.object_id for p in final.problems] == ["broken"]


def test_checkouts_after_healing_match_the_image(tmp_path: Path, store: Store) -> None:
    image, commit, deploy = _setup(tmp_path, store)
    before = walk(deploy)
    (deploy / "usr/share/doc").unlink()
    store.object_path(store.lookup(commit, "usr/share/doc").object_id).unlink()  # type: ignore[union-attr]
    report = store.fsck()
    assert [p.kind for p in report.problems] == ["missing"]
    store.fsck(repair=True)
    import_image(store, image)
    again = tmp_path / "again"
    store.checkout(commit, again)
    assert walk(again) == before


@pytest.mark.timeout(120)
def test_refs_holding_garbage_are_reported(tmp_path: Path, store: Store) -> None:
    import os

    _, commit, _ = _setup(tmp_path, store)
    refs = store.path / "refs"
    (refs / "binary").write_bytes(b"\xff\xfe" + commit.encode() + b"\n")
    (refs / "trailing").write_text(f"{commit} and more\n")
    (refs / "huge").write_text(commit + "\n" + " " * 100_000)
    (refs / "bad name").write_text(commit + "\n")
    (refs / "a-dir-link").symlink_to(refs / "images")
    os.mkfifo(refs / "fifo")  # reading it would wait for a writer
    report = store.fsck()
    problems = {p.object_id: p.message for p in report.problems if p.kind == "ref"}
    assert problems == {
        "binary": "does not hold a commit id",
        "trailing": "does not hold a commit id",
        "huge": "does not hold a commit id",
        "bad name": "is not a valid ref name",
        "a-dir-link": "does not hold a commit id",
        "fifo": "does not hold a commit id",
    }
    assert set(report.refs_affected) == set(problems)
    assert not report.ok
    with pytest.raises(StoreCorruptError, match="does not hold a commit id"):
        store.ref("binary")
    assert store.ref("images/default") == commit
