"""Layer-chain records: the merged tree after the first k layers of an image,
named by the OCI ChainID of those layers.

The record format, and when records are written, kept and removed, is drawn in
:mod:`atoll.store.format`.  The importer starts from the longest usable record
(:mod:`atoll.store.importer`), gc keeps the records of kept commits
(:mod:`atoll.store.gc`) and fsck checks them (:mod:`atoll.store.fsck`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.fsutil import fsync_dir, write_atomic
from atoll.store.format import (
    CHAINS_DIR,
    STATE_DIR,
    DirMeta,
    canonical_json,
    is_object_id,
    list_names,
)

#: The version of the record's JSON; records of other versions are not used.
CHAIN_RECORD_VERSION = 1
_SHA256 = "sha256:"


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The ChainIDs (as hex) of every prefix of *diff_ids* (``sha256:<hex>``
    strings); empty when the layers are not all named by sha256."""
    if not all(d.startswith(_SHA256) and is_object_id(d[len(_SHA256) :]) for d in diff_ids):
        return []
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id[len(_SHA256) :])
        else:
            text = f"{_SHA256}{out[-1]} {diff_id}"
            out.append(hashlib.sha256(text.encode()).hexdigest())
    return out


@dataclass(frozen=True)
class ChainRecord:
    """The merged tree of the first *layers* layers of the chain *chain_id* (hex)."""

    chain_id: str
    layers: int
    tree: str
    root: DirMeta
    special: bool

    def encode(self) -> bytes:
        return canonical_json(
            {
                "chain_id": f"{_SHA256}{self.chain_id}",
                "layers": self.layers,
                "root": self.root.to_json(),
                "special": self.special,
                "tree": self.tree,
                "version": CHAIN_RECORD_VERSION,
            }
        )


def decode_chain_record(name: str, data: bytes) -> ChainRecord:
    """Parse the record in ``state/chains/<name>``; ValueError says what is wrong."""
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("version") != CHAIN_RECORD_VERSION:
        raise ValueError(f"record version {doc.get('version')!r} is not {CHAIN_RECORD_VERSION}")
    if doc.get("chain_id") != f"{_SHA256}{name}":
        raise ValueError(f"names chain {doc.get('chain_id')!r}, not its file name")
    tree, layers, special = doc.get("tree"), doc.get("layers"), doc.get("special")
    if not isinstance(tree, str) or not is_object_id(tree):
        raise ValueError("no valid tree id")
    if type(layers) is not int or layers < 1:
        raise ValueError("'layers' must be a positive integer")
    if type(special) is not bool:
        raise ValueError("'special' must be true or false")
    return ChainRecord(name, layers, tree, DirMeta.from_json(doc.get("root"), "root"), special)


def chains_dir(store_path: Path) -> Path:
    return store_path / STATE_DIR / CHAINS_DIR


def record_names(store_path: Path) -> list[str]:
    """Every name in ``state/chains/`` (records, and whatever else is there)."""
    folder = chains_dir(store_path)
    return sorted(list_names(folder)) if folder.is_dir() else []


def read_chain_record(store_path: Path, chain_id: str) -> ChainRecord | None:
    """The record of *chain_id*, or None when there is none or it is not valid."""
    try:
        data = (chains_dir(store_path) / chain_id).read_bytes()
        return decode_chain_record(chain_id, data)
    except (OSError, ValueError):
        return None


def write_chain_record(store_path: Path, record: ChainRecord) -> bool:
    """Write *record* (atomically and durably) unless the same one is there;
    True when it was written."""
    folder = chains_dir(store_path)
    data = record.encode()
    path = folder / record.chain_id
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    if not folder.is_dir():
        # A store made before records existed: the folder is new, and durable first.
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)
    write_atomic(path, data)
    return True
