"""gc keeps what refs and the caller name, and frees everything else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from atoll.store import Store
from helpers.stores import import_image
from helpers.treeimage import build_tree_image


def _three_versions(tmp_path: Path, store: Store) -> list[str]:
    commits = []
    for n in range(3):
        image = build_tree_image(
            tmp_path / "img",
            [{"usr/shared": b"s" * 5000, f"usr/only-{n}": os.urandom(20000)}],
            ref=str(n),
        )
        commits.append(import_image(store, image, ref="images/default").commit_id)
    return commits


def _all_objects(store: Store) -> set[str]:
    return {p.name for p in store.objects.glob("*/*")}


def test_gc_keeps_refs_and_keep_and_frees_the_rest(tmp_path: Path, store: Store) -> None:
    c0, c1, c2 = _three_versions(tmp_path, store)
    # c2 is the ref, c0 a deployment the caller keeps; c1 (c2's parent) goes.
    assert store.commit(c2).parent == c1
    (store.path / "tmp" / "staging-dead").mkdir()
    (store.path / "tmp" / "staging-dead" / "x.file").write_bytes(b"left by a crash")
    report = store.gc(keep=[c0])
    assert report.commits_kept == 2 and report.commits_removed == 1
    assert report.objects_removed == 1 + 1 + 2  # commit, only-1, its root and usr trees
    assert report.bytes_freed >= 20000
    assert not store.has_commit(c1)
    assert store.has_commit(c0) and store.has_commit(c2)
    assert not (store.path / "tmp" / "staging-dead").exists()
    assert store.fsck().ok
    for commit in (c0, c2):
        dest = tmp_path / f"co-{commit[:8]}"
        store.checkout(commit, dest)
        assert (dest / "usr/shared").read_bytes() == b"s" * 5000
    # Nothing kept: everything goes.
    store.set_ref("images/default", None)
    store.gc()
    assert _all_objects(store) == set()


def test_gc_does_not_count_space_still_used_by_a_deployment(tmp_path: Path) -> None:
    freed = []
    for deployed in (False, True):
        store = Store.create(tmp_path / f"store-{deployed}")
        c0, _, _ = _three_versions(tmp_path / f"images-{deployed}", store)
        kept_by_deployment = 0
        if deployed:
            store.checkout(c0, tmp_path / "deploy", copy_paths=())
            for path in ("usr/only-0", "usr/shared"):
                st = (tmp_path / "deploy" / path).stat()
                kept_by_deployment += st.st_blocks * 512
        store.set_ref("images/default", None)
        report = store.gc()
        assert report.objects_removed == 13
        freed.append(report.bytes_freed + kept_by_deployment)
    # The files a deployment still links are removed from the store but free nothing.
    assert freed[0] == freed[1]


def test_gc_waits_for_an_import(tmp_path: Path, store: Store) -> None:
    holder = (
        "import sys; from pathlib import Path; from atoll.store import Store\n"
        "s = Store.open(Path(sys.argv[1]))\n"
        "with s.lock():\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    _three_versions(tmp_path, store)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(store.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "held\n"
    gc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from atoll.store import "
            "Store; print(Store.open(Path(sys.argv[1])).gc().objects_removed)",
            str(store.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    assert gc.poll() is None  # blocked on the lock
    proc.stdin.write("\n")
    proc.stdin.close()
    proc.wait(timeout=10)
    out, _ = gc.communicate(timeout=10)
    assert int(out) > 0
