"""An import or gc killed with SIGKILL at each of its steps leaves a consistent
store: fsck finds nothing wrong, and no ref or commit names something missing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.store import Store
from atoll.store.chains import chain_ids, read_chain_record
from helpers.stores import import_image, walk
from helpers.treeimage import TreeImage, build_tree_image

SRC = Path(__file__).resolve().parents[2] / "src" / "atoll" / "store"

IMPORT = """
import sys
from pathlib import Path
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import parse_manifest
from atoll.oci.transports import ImageName
from atoll.oci.transports.layout import LayoutSource
from atoll.store import Store

store = Store.open(Path(sys.argv[1]))
if sys.argv[2] == "gc":
    store.gc()
    raise SystemExit(0)
with LayoutSource(ImageName.parse(sys.argv[2]), SystemContext()) as source:
    raw, declared = source.get_manifest(None)
    manifest = parse_manifest(raw, declared, where=sys.argv[2])
    with source.open_blob(manifest.config) as chunks:
        config = b"".join(chunks)
    store.import_image(
        source, manifest, config, image=sys.argv[2], manifest_digest=Digest.of(raw),
        ref="images/default",
    )
"""


def store_crash_points() -> list[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        names.update(re.findall(r'crashpoint\(\s*"([a-z0-9-]+)"', path.read_text()))
    return sorted(names)


def test_the_store_has_crash_points() -> None:
    assert {
        "store-import-staged",
        "store-import-publishing",
        "store-import-committed",
        "store-gc-marked",
        "store-import-chain-written",
    } <= set(store_crash_points())


def _run(store: Store, what: str, point: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
    env["ATOLL_CRASH_AT"] = point
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT, str(store.path), what],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def _images(tmp_path: Path) -> tuple[TreeImage, TreeImage]:
    base = {f"usr/lib/f{i}": os.urandom(3000) for i in range(20)}
    v1 = build_tree_image(tmp_path / "img", [base, {"etc/version": "1"}], ref="1")
    v2 = build_tree_image(
        tmp_path / "img",
        [base, {"etc/version": "2", "usr/bin/new": os.urandom(5000)}],
        ref="2",
    )
    return v1, v2


@pytest.mark.parametrize("point", store_crash_points())
def test_sigkill_at_every_step_leaves_a_consistent_store(tmp_path: Path, point: str) -> None:
    store = Store.create(tmp_path / "store")
    v1, v2 = _images(tmp_path)
    first = import_image(store, v1, ref="images/default").commit_id
    what = "gc" if point.startswith("store-gc") else v2.name
    if what == "gc":
        store.set_ref("images/default", None)
        store.set_ref("kept", first)
    assert _run(store, what, point) == -signal.SIGKILL, f"{point} was not reached"

    store = Store.open(store.path)
    report = store.fsck()
    assert report.ok, report.problems
    # The ref names the old commit or the new one, and every commit is complete.
    ref = store.ref("images/default") if what != "gc" else store.ref("kept")
    assert ref is not None and store.has_commit(ref)
    for commit in store.commit_ids():
        dest = tmp_path / f"co-{commit[:12]}"
        store.checkout(commit, dest)
        assert (dest / "etc/version").read_text() in ("1", "2")
        assert len(walk(dest / "usr/lib")) == 21
    # The store carries on: the import completes and leaves nothing behind.
    second = import_image(store, v2, ref="images/default")
    assert store.ref("images/default") == second.commit_id
    assert store.fsck().ok
    assert not any((store.path / "tmp").iterdir())


@pytest.mark.parametrize("point", ["store-import-committed", "store-import-chain-written"])
def test_a_crash_leaves_no_chain_record_or_a_complete_one(tmp_path: Path, point: str) -> None:
    store = Store.create(tmp_path / "store")
    base = {f"usr/lib/f{i}": os.urandom(3000) for i in range(20)}
    top = {"etc/version": "2", "usr/bin/new": os.urandom(5000)}
    v1 = build_tree_image(tmp_path / "img", [base, {"etc/version": "1"}], ref="1")
    v2 = build_tree_image(tmp_path / "img", [base, top], ref="2")
    import_image(store, v1, ref="images/default")
    assert _run(store, v2.name, point) == -signal.SIGKILL

    store = Store.open(store.path)
    chain = chain_ids(list(v2.diff_ids))[1]
    folder = store.path / "state" / "chains"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    record = read_chain_record(store.path, chain)
    if point == "store-import-committed":
        assert not (folder / chain).exists()
    else:
        assert record is not None and record.layers == 2
        assert store.has_object(record.tree, "tree")
    assert store.fsck().ok
    assert store.ref("images/default") == import_image(store, v1).commit_id
    # The same two layers under another manifest: read again only without the record.
    relabelled = build_tree_image(tmp_path / "img", [base, top], ref="x", labels={"a": "b"})
    again = import_image(store, relabelled)
    assert again.stats.layers_reused == (1 if record is None else 2)
    assert store.fsck().ok
