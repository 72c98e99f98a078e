"""Layer records: a layer the store has read before is applied from its record,
wherever it sits in the new image, and the result is what a cold import gives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atoll.store import Store
from helpers.stores import import_image, walk
from helpers.treeimage import OPAQUE, WHITEOUT, TreeImage, build_tree_image, directory, hardlink
from store.test_chains import _base, counted_import


def _layer_hex(image: TreeImage, index: int) -> str:
    return image.diff_ids[index].removeprefix("sha256:")


def _records(store: Store) -> set[str]:
    folder = store.path / "state/layers"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _versions(tmp_path: Path) -> tuple[TreeImage, TreeImage]:
    """v1 and v2 differ in their middle layer only; the top layer whites out,
    makes a directory opaque and hardlinks to a file of the base."""
    top: dict[str, Any] = {
        "usr/lib/f03": WHITEOUT,
        "usr/share/gone": OPAQUE,
        "usr/share/gone/b": b"b",
        "usr/share/doc": directory(0o700),
        "usr/bin/again": hardlink("usr/bin/tool"),
        "usr/lib/new": os.urandom(20000),
    }
    v1 = build_tree_image(tmp_path / "img", [_base(), {"etc/version": "1"}, top], ref="1")
    v2 = build_tree_image(tmp_path / "img", [_base(), {"etc/version": "2"}, top], ref="2")
    return v1, v2


def _same_as_cold(tmp_path: Path, store: Store, commit_id: str, image: TreeImage) -> None:
    cold_store = Store.create(tmp_path / "cold")
    cold = import_image(cold_store, image)
    assert store.commit(commit_id).tree == cold_store.commit(cold.commit_id).tree
    store.checkout(commit_id, tmp_path / "warm-co")
    cold_store.checkout(cold.commit_id, tmp_path / "cold-co")
    assert walk(tmp_path / "warm-co") == walk(tmp_path / "cold-co")


def test_an_unchanged_layer_above_a_changed_one_is_not_read(tmp_path: Path, store: Store) -> None:
    v1, v2 = _versions(tmp_path)
    import_image(store, v1, ref="images/default")
    assert _records(store) == {_layer_hex(v1, i) for i in range(3)}
    top = v1.layer_digests[2]
    assert v2.layer_digests[2] == top
    result, asked = counted_import(
        store, v2, forbidden={v1.layer_digests[0], top}, ref="images/default"
    )
    assert asked == [v2.layer_digests[1]]
    stats = result.stats
    assert (stats.layers_reused, stats.layers_replayed) == (1, 1)
    assert stats.bytes_skipped == sum(
        v2.blob_path(v2.layer_digests[i]).stat().st_size for i in (0, 2)
    )
    assert stats.to_json()["layersReplayed"] == 1
    _same_as_cold(tmp_path, store, result.commit_id, v2)
    co = tmp_path / "warm-co"
    assert not (co / "usr/lib/f03").exists()
    assert sorted(p.name for p in (co / "usr/share/gone").iterdir()) == ["b"]
    assert (co / "usr/bin/again").stat().st_ino == (co / "usr/bin/tool").stat().st_ino
    assert store.fsck().ok


def test_a_record_whose_file_objects_are_gone_is_not_used(tmp_path: Path, store: Store) -> None:
    v1, v2 = _versions(tmp_path)
    commit = import_image(store, v1).commit_id
    entry = store.lookup(commit, "usr/lib/new")
    assert entry is not None
    store.object_path(entry.object_id).unlink()
    result, asked = counted_import(store, v2, forbidden={v1.layer_digests[0]})
    assert asked == list(v2.layer_digests[1:]) and result.stats.layers_replayed == 0
    _same_as_cold(tmp_path, store, result.commit_id, v2)


def test_fsck_reports_a_record_that_does_not_parse_and_repair_removes_it(
    tmp_path: Path, store: Store
) -> None:
    v1, v2 = _versions(tmp_path)
    import_image(store, v1, ref="images/default")
    bad = _layer_hex(v1, 2)
    (store.path / "state/layers" / bad).write_bytes(b"not zlib")
    report = store.fsck()
    assert [(p.kind, p.object_id) for p in report.problems] == [("layer", bad)]
    assert "invalid record" in report.problems[0].message
    # An import does not use it: the layer is read again.
    _, asked = counted_import(store, v2, forbidden={v1.layer_digests[0]})
    assert asked == list(v2.layer_digests[1:])
    store.fsck(repair=True)
    assert bad not in _records(store)
    assert store.fsck().ok


def test_gc_keeps_the_records_of_layers_a_kept_commit_has(tmp_path: Path, store: Store) -> None:
    v1, v2 = _versions(tmp_path)
    import_image(store, v1, ref="images/default")
    import_image(store, v2, ref="images/default")
    store.gc()
    # v1's commit is gone; its middle layer is no kept commit's.
    assert _records(store) == {_layer_hex(v2, i) for i in range(3)}
    store.set_ref("images/default", None)
    store.gc()
    assert _records(store) == set()
