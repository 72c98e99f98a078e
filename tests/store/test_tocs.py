"""The TOCs a store keeps for later updates (atoll.store.tocs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from atoll.store import Store
from atoll.store.gc import gc
from atoll.store.tocs import TOCS_DIR, find_toc, keep_toc

TOC = b"(a compressed table of contents)"
DIGEST = f"sha256:{hashlib.sha256(TOC).hexdigest()}"
DIFF_ID = f"sha256:{'d' * 64}"


def test_only_bytes_that_match_their_digest_are_kept_and_read(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "store")
    assert not keep_toc(store, DIFF_ID, DIGEST, TOC + b"x")
    assert find_toc(store, DIGEST) is None
    assert keep_toc(store, DIFF_ID, DIGEST, TOC)
    assert find_toc(store, DIGEST) == TOC
    # Changed on disk: not trusted.
    (path,) = (store.path / "state" / TOCS_DIR).iterdir()
    path.write_bytes(TOC.upper())
    assert find_toc(store, DIGEST) is None


def test_gc_removes_the_tocs_of_layers_no_commit_has(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "store")
    keep_toc(store, DIFF_ID, DIGEST, TOC)
    gc(store)
    assert find_toc(store, DIGEST) is None
    assert not list((store.path / "state" / TOCS_DIR).iterdir())
