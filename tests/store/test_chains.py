"""Layer-chain records: a re-import starts from the layers it shares with an
image imported before, without reading them, and ends where a cold import would."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.errors import LayerError
from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor
from atoll.oci.transports.base import ImageSource
from atoll.store import ImportResult, Store
from atoll.store.chains import chain_ids
from helpers.stores import import_image, open_image, walk
from helpers.treeimage import (
    OPAQUE,
    WHITEOUT,
    Node,
    TreeImage,
    build_tree_image,
    directory,
    hardlink,
    symlink,
)


@pytest.fixture(autouse=True)
def _chain_records_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module is about chain records: layer records (which would apply
    unchanged layers above a changed one; tests/store/test_layer_records.py)
    are not read here, so what the tests count is what chain records do."""
    monkeypatch.setattr("atoll.store.importer.read_layer_record", lambda *_: None)


class CountingSource(ImageSource):
    """A real oci: layout source that counts the blobs asked for and refuses
    the ones in *forbidden* (so a test sees a layer that was not read)."""

    def __init__(self, inner: ImageSource, forbidden: set[str] | None = None) -> None:
        self.inner = inner
        self.description = inner.description
        self.forbidden = forbidden or set()
        self.asked: list[str] = []

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str | None]:
        return self.inner.get_manifest(digest)

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        self.asked.append(str(desc.digest))
        if str(desc.digest) in self.forbidden:
            raise AssertionError(f"blob {desc.digest} was asked for")
        return self.inner.open_blob(desc)

    def close(self) -> None:
        self.inner.close()


def counted_import(
    store: Store, image: TreeImage, forbidden: set[str] | None = None, **kw: Any
) -> tuple[ImportResult, list[str]]:
    inner, manifest, config_raw = open_image(image)
    with CountingSource(inner, forbidden) as source:
        result = store.import_image(
            source,
            manifest,
            config_raw,
            image=image.name,
            manifest_digest=Digest.parse(image.manifest_digest),
            **kw,
        )
    return result, source.asked


def _base(seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    layer: dict[str, Any] = {
        f"usr/lib/f{i:02d}": rng.randbytes(rng.randint(0, 9000)) for i in range(40)
    }
    layer.update(
        {
            "bin": symlink("usr/bin"),
            "usr/bin/tool": Node(content=b"#!/bin/sh\n", mode=0o755),
            "usr/share/doc/readme": b"read me",
            "usr/share/gone/a": b"a",
            "etc/conf": b"v1",
            "opt/secret": Node(content=b"s", mode=0o600, uid=7, gid=8),
        }
    )
    return layer


def _versions(tmp_path: Path) -> tuple[TreeImage, TreeImage, dict[str, Any]]:
    base = _base()
    v1 = build_tree_image(tmp_path / "img", [base, {"etc/version": "1"}], ref="1")
    top: dict[str, Any] = {
        "etc/version": "2",
        "etc/conf": b"v2",
        "usr/lib/f03": WHITEOUT,
        "usr/share/gone": OPAQUE,
        "usr/share/gone/b": b"b",
        "usr/share/doc": directory(0o700),
        "usr/bin/again": hardlink("usr/bin/tool"),
        "usr/lib/new": os.urandom(20000),
    }
    v2 = build_tree_image(tmp_path / "img", [base, {"etc/version": "1"}, top], ref="2")
    return v1, v2, top


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = ("sha256:" + hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    ab = hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = hashlib.sha256(f"sha256:{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a.removeprefix("sha256:"), ab, abc]
    assert chain_ids([]) == []
    assert chain_ids(["sha512:" + hashlib.sha512(b"a").hexdigest()]) == []


def test_an_update_reads_only_the_layers_above_the_shared_ones(
    tmp_path: Path, store: Store
) -> None:
    v1, v2, _ = _versions(tmp_path)
    first = import_image(store, v1, ref="images/default")
    assert first.stats.layers_reused == 0

    shared = set(v1.layer_digests)
    second, asked = counted_import(store, v2, forbidden=shared, ref="images/default")
    assert asked == [v2.layer_digests[2]]
    top_size = v2.blob_path(v2.layer_digests[2]).stat().st_size
    shared_size = sum(v1.blob_path(d).stat().st_size for d in shared)
    assert second.stats.layers_reused == 2 and second.stats.bytes_skipped == shared_size
    assert second.stats.bytes_fetched == top_size
    assert second.stats.to_json()["layersReused"] == 2
    assert store.commit(second.commit_id).parent == first.commit_id

    # The same commit, tree for tree, as a cold import into an empty store.
    cold_store = Store.create(tmp_path / "cold")
    cold = import_image(cold_store, v2)
    assert cold.stats.layers_reused == 0
    assert store.commit(second.commit_id).tree == cold_store.commit(cold.commit_id).tree
    store.checkout(second.commit_id, tmp_path / "warm-co")
    cold_store.checkout(cold.commit_id, tmp_path / "cold-co")
    assert walk(tmp_path / "warm-co") == walk(tmp_path / "cold-co")
    co = tmp_path / "warm-co"
    assert not (co / "usr/lib/f03").exists() and (co / "usr/lib/f04").exists()
    assert sorted(p.name for p in (co / "usr/share/gone").iterdir()) == ["b"]
    assert (co / "usr/share/doc").stat().st_mode & 0o777 == 0o700
    assert (co / "usr/share/doc/readme").read_bytes() == b"read me"
    assert store.fsck().ok


def test_the_same_layers_under_another_manifest_read_no_blob(tmp_path: Path, store: Store) -> None:
    layers = [_base(), {"etc/version": "1"}]
    v1 = build_tree_image(tmp_path / "img", layers, ref="1")
    relabelled = build_tree_image(tmp_path / "img", layers, ref="x", labels={"a": "b"})
    assert relabelled.manifest_digest != v1.manifest_digest
    first = import_image(store, v1)
    again, asked = counted_import(store, relabelled, forbidden=set(v1.layer_digests))
    assert asked == [] and again.stats.layers_reused == 2 and not again.stats.reused
    assert store.commit(again.commit_id).tree == store.commit(first.commit_id).tree


def _record(store: Store, image: TreeImage, layers: int) -> dict[str, Any]:
    chain = chain_ids(list(image.diff_ids))[layers - 1]
    doc: dict[str, Any] = json.loads((store.path / "state/chains" / chain).read_bytes())
    return doc


def test_records_name_the_merged_tree_of_each_prefix(tmp_path: Path, store: Store) -> None:
    v1, _, _ = _versions(tmp_path)
    result = import_image(store, v1)
    full = _record(store, v1, 2)
    assert full["tree"] == store.commit(result.commit_id).tree and full["layers"] == 2
    base = _record(store, v1, 1)
    assert base["layers"] == 1 and not base["special"]
    assert base["chain_id"] == v1.diff_ids[0]
    etc_full = store.tree(store.tree(full["tree"]).dirs["etc"][0])
    etc_base = store.tree(store.tree(base["tree"]).dirs["etc"][0])
    assert set(etc_full.files) == {"conf", "version"} and set(etc_base.files) == {"conf"}


@pytest.mark.parametrize("damage", ["corrupt tree", "missing tree", "missing file", "bad record"])
def test_a_damaged_record_falls_back_to_reading_the_layers(
    tmp_path: Path, store: Store, damage: str
) -> None:
    v1, v2, _ = _versions(tmp_path)
    import_image(store, v1)
    base = _record(store, v1, 1)
    usr_tree = store.tree(base["tree"]).dirs["usr"][0]
    target = store.object_path(usr_tree, "tree")
    if damage == "corrupt tree":
        target.write_bytes(target.read_bytes() + b" ")
    elif damage == "missing tree":
        target.unlink()
    elif damage == "missing file":
        lib = store.tree(store.tree(usr_tree).dirs["lib"][0])
        store.object_path(lib.files["f05"]).unlink()
    # Every record of v1 reaches the damage, or is itself damaged.
    for layers in (1, 2):
        chain = chain_ids(list(v1.diff_ids))[layers - 1]
        if damage == "bad record":
            (store.path / "state/chains" / chain).write_text('{"tree": "x"')
    result, asked = counted_import(store, v2)
    assert result.stats.layers_reused == 0 and asked == list(v2.layer_digests)
    cold_store = Store.create(tmp_path / "cold")
    cold = import_image(cold_store, v2)
    assert store.commit(result.commit_id).tree == cold_store.commit(cold.commit_id).tree
    store.checkout(result.commit_id, tmp_path / "co")
    cold_store.checkout(cold.commit_id, tmp_path / "cold-co")
    assert walk(tmp_path / "co") == walk(tmp_path / "cold-co")
    if damage.startswith("missing"):
        # Reading the base layer again wrote the missing object back: the record works again.
        assert store.fsck().ok
        other = build_tree_image(tmp_path / "img", [_base(), {"z": "z"}], ref="z")
        again, asked = counted_import(store, other, forbidden={v1.layer_digests[0]})
        assert again.stats.layers_reused == 1 and asked == [other.layer_digests[1]]


def test_a_shorter_record_is_used_when_the_longer_one_is_damaged(
    tmp_path: Path, store: Store
) -> None:
    v1, v2, _ = _versions(tmp_path)
    import_image(store, v1)
    (store.path / "state/chains" / chain_ids(list(v1.diff_ids))[1]).unlink()
    result, asked = counted_import(store, v2, forbidden={v1.layer_digests[0]})
    assert result.stats.layers_reused == 1 and asked == list(v2.layer_digests[1:])


def test_a_layer_writing_through_a_shared_symlink_is_refused_as_before(
    tmp_path: Path, store: Store
) -> None:
    base = _base()
    v1 = build_tree_image(tmp_path / "img", [base], ref="1")
    bad = build_tree_image(tmp_path / "img", [base, {"bin/evil": b"x"}], ref="bad", parents=False)
    import_image(store, v1)
    with pytest.raises(LayerError, match="goes through the symlink 'bin'") as warm:
        counted_import(store, bad, forbidden={v1.layer_digests[0]})
    with pytest.raises(LayerError) as cold:
        import_image(Store.create(tmp_path / "cold"), bad)
    assert str(warm.value) == str(cold.value)


def test_layers_with_device_nodes_are_reused_only_where_devices_are_allowed(
    tmp_path: Path, store: Store
) -> None:
    base = {"dev/null": Node("char", mode=0o666, major=1, minor=3), "etc/a": b"a"}
    v1 = build_tree_image(tmp_path / "img", [base], ref="1")
    v2 = build_tree_image(tmp_path / "img", [base, {"etc/b": b"b"}], ref="2")
    import_image(store, v1, allow_devices=True)
    assert _record(store, v1, 1)["special"] is True
    with pytest.raises(LayerError, match="device node"):
        import_image(store, v2)
    again, asked = counted_import(store, v2, forbidden={v1.layer_digests[0]}, allow_devices=True)
    assert again.stats.layers_reused == 1 and asked == [v2.layer_digests[1]]


def test_a_store_made_before_records_gets_them(tmp_path: Path, store: Store) -> None:
    v1, v2, _ = _versions(tmp_path)
    (store.path / "state/chains").rmdir()
    import_image(store, v1)
    _, asked = counted_import(store, v2, forbidden=set(v1.layer_digests))
    assert asked == [v2.layer_digests[2]]


# --- gc and fsck -------------------------------------------------------------------------


def _records(store: Store) -> set[str]:
    return {p.name for p in (store.path / "state/chains").iterdir()}


def test_gc_keeps_records_while_a_kept_image_builds_on_them(tmp_path: Path, store: Store) -> None:
    v1, v2, _ = _versions(tmp_path)
    c1 = import_image(store, v1, ref="images/default").commit_id
    import_image(store, v2, ref="images/default")
    chains1, chains2 = chain_ids(list(v1.diff_ids)), chain_ids(list(v2.diff_ids))
    assert chains2[:2] == chains1 and _records(store) == set(chains2)
    # v1's commit goes; its chains are v2's first two: they stay, with their trees.
    report = store.gc()
    assert report.commits_removed == 1 and not store.has_commit(c1)
    assert _records(store) == set(chains2)
    assert store.fsck().ok
    v3 = build_tree_image(tmp_path / "img", [_base(), {"etc/version": "1"}, {"x": b"3"}], ref="3")
    third, asked = counted_import(store, v3, forbidden=set(v1.layer_digests), ref="images/default")
    assert third.stats.layers_reused == 2 and asked == [v3.layer_digests[2]]
    # Nothing kept: records and every object go.
    store.set_ref("images/default", None)
    (store.path / "state/chains/.atoll-tmp-left.1234").write_bytes(b"")
    store.gc()
    assert _records(store) == set()
    assert not list(store.objects.glob("*/*"))
    assert store.fsck().ok


def test_gc_drops_the_records_of_images_it_removes(tmp_path: Path, store: Store) -> None:
    v1, _, _ = _versions(tmp_path)
    other = build_tree_image(tmp_path / "img", [{"other": b"o"}], ref="other")
    import_image(store, v1, ref="one")
    kept = import_image(store, other).commit_id
    store.set_ref("one", None)
    store.gc(keep=[kept])
    assert _records(store) == set(chain_ids(list(other.diff_ids)))
    # With its record gone, v1 is read in full again.
    again, asked = counted_import(store, v1)
    assert again.stats.layers_reused == 0 and asked == list(v1.layer_digests)


def test_fsck_reports_and_repairs_records(tmp_path: Path, store: Store) -> None:
    v1, _, _ = _versions(tmp_path)
    import_image(store, v1, ref="images/default")
    base, full = chain_ids(list(v1.diff_ids))
    assert store.fsck().ok and store.fsck().chains_affected == ()
    # The base layer's root tree is reached by no commit: only the record needs it.
    store.object_path(_record(store, v1, 1)["tree"], "tree").unlink()
    (store.path / "state/chains" / ("0" * 64)).write_text("{}")
    report = store.fsck()
    assert {(p.kind, p.object_id) for p in report.problems} == {
        ("chain", base),
        ("chain", "0" * 64),
    }
    assert set(report.chains_affected) == {base, "0" * 64}
    assert report.to_json()["chainsAffected"] == sorted([base, "0" * 64])
    repaired = store.fsck(repair=True)
    assert set(repaired.chains_affected) == {base, "0" * 64}
    assert _records(store) == {full}
    assert store.fsck().ok


def test_fsck_repair_of_a_corrupt_file_drops_the_records_and_a_reimport_heals(
    tmp_path: Path, store: Store
) -> None:
    v1, v2, _ = _versions(tmp_path)
    commit = import_image(store, v1, ref="images/default").commit_id
    entry = store.lookup(commit, "usr/lib/f07")
    assert entry is not None
    path = store.object_path(entry.object_id)
    path.chmod(0o777)
    report = store.fsck()
    # The corrupt object is the problem; the records that reach it are affected.
    assert [p.kind for p in report.problems] == ["file"]
    assert set(report.chains_affected) == set(chain_ids(list(v1.diff_ids)))
    store.fsck(repair=True)
    assert _records(store) == set()
    result, asked = counted_import(store, v2, ref="images/default")
    assert result.stats.layers_reused == 0 and asked == list(v2.layer_digests)
    import_image(store, v1)
    assert not store.is_partial(commit)
    assert store.fsck().ok


def _chain_cost(store: Store) -> tuple[int, int]:
    """Bytes of tree objects and records, and the number of records."""
    trees = sum(p.stat().st_size for p in store.objects.glob("*/*.tree"))
    records = list((store.path / "state/chains").iterdir())
    return trees + sum(p.stat().st_size for p in records), len(records)


def test_records_grow_linearly_with_the_number_of_layers(tmp_path: Path) -> None:
    """One file per layer: a record after every layer would encode the root
    again each time (n²/2 entries); the cost per layer must not grow with n."""
    n = 150
    costs: dict[int, tuple[int, int]] = {}
    for layers in (n, 2 * n, 3 * n):
        image = build_tree_image(
            tmp_path / f"img{layers}",
            [{f"f{i:04d}": f"layer {i}\n"} for i in range(layers)],
            parents=False,
        )
        store = Store.create(tmp_path / f"store{layers}")
        import_image(store, image)
        costs[layers] = _chain_cost(store)
        assert store.fsck().ok
    per_layer = {layers: cost / layers for layers, (cost, _) in costs.items()}
    assert per_layer[2 * n] <= 1.1 * per_layer[n], costs
    assert per_layer[3 * n] <= 1.1 * per_layer[n], costs
    assert costs[3 * n][1] <= 3 * costs[n][1], costs


def test_an_update_of_many_tiny_layers_still_reads_only_its_new_layer(
    tmp_path: Path, store: Store
) -> None:
    layers: list[dict[str, Any]] = [{f"f{i:04d}": f"layer {i}\n"} for i in range(200)]
    v1 = build_tree_image(tmp_path / "img", layers, ref="1", parents=False)
    v2 = build_tree_image(tmp_path / "img", [*layers, {"new": b"new"}], ref="2", parents=False)
    import_image(store, v1)
    result, asked = counted_import(store, v2, forbidden=set(v1.layer_digests))
    assert asked == [v2.layer_digests[-1]] and result.stats.layers_reused == 200
    cold = Store.create(tmp_path / "cold")
    assert store.commit(result.commit_id).tree == cold.commit(import_image(cold, v2).commit_id).tree
