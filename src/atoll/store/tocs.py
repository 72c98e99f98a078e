"""The tables of contents of imported zstd:chunked layers, kept for later updates.

A delta carries the TOCs of NEW's changed layers as patches against TOCs the
device has (:mod:`atoll.oci.delta`), and a partial pull skips fetching a TOC
it holds already.  Each one is kept as the exact compressed bytes the layer
carried, named by the layer's diff_id and the TOC's digest (format version
:data:`TOCS_VERSION`)::

    STORE/state/tocs/<diff_id hex>.<TOC sha256 hex>     the compressed TOC bytes

A cache like the content index: written atomically after an import, read
only when its bytes still have the digest in its name, removed by ``gc``
with the layer records of diff_ids no kept commit lists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from atoll.fsutil import write_atomic
from atoll.store.format import STATE_DIR, list_names

if TYPE_CHECKING:
    from atoll.store.store import Store

TOCS_VERSION = 1
TOCS_DIR = "tocs"


def _folder(store_path: Path) -> Path:
    return store_path / STATE_DIR / TOCS_DIR


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def keep_toc(store: Store, diff_id: str, toc_digest: str, data: bytes) -> bool:
    """Keep *data* when it is the TOC *toc_digest* names (False: it is not)."""
    if hashlib.sha256(data).hexdigest() != _hex(toc_digest):
        return False
    folder = _folder(store.path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_hex(diff_id)}.{_hex(toc_digest)}"
    if not path.exists():
        write_atomic(path, data, durable=False)
    return True


def find_toc(store: Store, toc_digest: str) -> bytes | None:
    """The TOC with this digest (checked), if the store kept it."""
    folder = _folder(store.path)
    want = _hex(toc_digest)
    for name in list_names(folder) if folder.is_dir() else ():
        if name.partition(".")[2] != want:
            continue
        try:
            data = (folder / name).read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == want:
            return data
    return None


def prune_tocs(store_path: Path, live_diff_ids: Iterable[str]) -> None:
    """Remove the TOCs of layers no kept commit has."""
    folder = _folder(store_path)
    live = {_hex(d) for d in live_diff_ids}
    for name in list_names(folder) if folder.is_dir() else ():
        if name.partition(".")[0] not in live:
            (folder / name).unlink(missing_ok=True)
