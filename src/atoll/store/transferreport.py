"""What one update moved, by path: the transfer report of ``atoll upgrade --json``
and ``atoll status`` (``lastTransfer``); :mod:`atoll.store.partial` fills it in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RANGES = "ranges"
WHOLE = "whole"
PRESENT = "present"
DELTA = "delta"
PATHS = (DELTA, RANGES, WHOLE, PRESENT)


@dataclass
class LayerTransfer:
    digest: str
    path: str
    #: Why this path (for whole layers: why not ranges).
    reason: str = ""
    #: Bytes moved over the network for this layer (ranges: TOC, tar-split and files).
    bytes: int = 0
    requests: int = 0
    #: Regular files fetched by range, and found in the store.
    files_fetched: int = 0
    files_present: int = 0
    #: The layer's size as stored in the registry.
    size: int = 0
    #: Of ``bytes``: the TOC and tar-split (ranges only).
    metadata_bytes: int = 0
    #: Of ``bytes`` and ``requests``: the delta's payload, and the files made from it.
    delta_bytes: int = 0
    delta_requests: int = 0
    files_delta: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "path": self.path,
            "reason": self.reason,
            "bytes": self.bytes,
            "requests": self.requests,
            "filesFetched": self.files_fetched,
            "filesPresent": self.files_present,
            "size": self.size,
            "metadataBytes": self.metadata_bytes,
            "deltaBytes": self.delta_bytes,
            "deltaRequests": self.delta_requests,
            "filesDelta": self.files_delta,
        }


@dataclass
class TransferReport:
    """Bytes and requests of one update, by path (see the module docstring)."""

    layers: list[LayerTransfer] = field(default_factory=list)
    #: What became of the delta from the running image: "" (none asked for),
    #: the delta's digest, or why none was used.
    delta: str = ""
    #: Finding the delta and reading its index.
    delta_lookup_bytes: int = 0
    delta_lookup_requests: int = 0
    #: Seconds by phase (:mod:`atoll.phases`), and the update's wall-clock ``elapsed``.
    seconds: dict[str, float] = field(default_factory=dict)

    def totals(self) -> dict[str, dict[str, int]]:
        out = {p: {"bytes": 0, "requests": 0, "layers": 0, "files": 0} for p in PATHS}
        for layer in self.layers:
            row = out[layer.path]
            # Present layers moved nothing: their bytes are what was saved.
            row["bytes"] += layer.size if layer.path == PRESENT else layer.bytes - layer.delta_bytes
            row["requests"] += layer.requests - layer.delta_requests
            row["layers"] += 1
            row["files"] += layer.files_fetched
            # A layer's files made from the delta count there, its ranges here.
            delta = out[DELTA]
            delta["bytes"] += layer.delta_bytes
            delta["requests"] += layer.delta_requests
            delta["files"] += layer.files_delta
        out[DELTA]["bytes"] += self.delta_lookup_bytes
        out[DELTA]["requests"] += self.delta_lookup_requests
        return out

    @property
    def bytes_moved(self) -> int:
        return sum(layer.bytes for layer in self.layers) + self.delta_lookup_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "bytesMoved": self.bytes_moved,
            "requests": sum(layer.requests for layer in self.layers) + self.delta_lookup_requests,
            "paths": self.totals(),
            "delta": self.delta,
            "deltaLookup": {
                "bytes": self.delta_lookup_bytes,
                "requests": self.delta_lookup_requests,
            },
            "seconds": dict(self.seconds),
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: Any) -> TransferReport:
        layers = [
            LayerTransfer(
                digest=str(row["digest"]),
                path=str(row["path"]),
                reason=str(row.get("reason", "")),
                bytes=int(row.get("bytes", 0)),
                requests=int(row.get("requests", 0)),
                files_fetched=int(row.get("filesFetched", 0)),
                files_present=int(row.get("filesPresent", 0)),
                size=int(row.get("size", 0)),
                metadata_bytes=int(row.get("metadataBytes", 0)),
                delta_bytes=int(row.get("deltaBytes", 0)),
                delta_requests=int(row.get("deltaRequests", 0)),
                files_delta=int(row.get("filesDelta", 0)),
            )
            for row in data.get("layers", [])
        ]
        lookup = data.get("deltaLookup") or {}
        return cls(
            layers,
            str(data.get("delta", "")),
            int(lookup.get("bytes", 0)),
            int(lookup.get("requests", 0)),
            {str(k): float(v) for k, v in (data.get("seconds") or {}).items()},
        )
