"""OCI images built from explicit file trees, without atoll's code.

Each layer is a dict from path to what is there: bytes or str for a regular
file (mode 0644, root), or a :class:`Node` for anything else (modes, owners,
xattrs, symlinks, hardlinks, devices, fifos, whiteouts, opaque markers).
Parents that a layer does not list get directory entries (0755, root) unless
``parents=False``.  Layers can be gzip, zstd or uncompressed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


@dataclass(frozen=True)
class Node:
    kind: str = "file"  # file, dir, symlink, hardlink, char, block, fifo
    content: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    target: str = ""  # symlink target, or the path a hardlink names
    xattrs: dict[str, bytes] = field(default_factory=dict)
    major: int = 0
    minor: int = 0


def symlink(target: str, **kw: object) -> Node:
    return Node("symlink", target=target, **kw)  # type: ignore[arg-type]


def hardlink(target: str) -> Node:
    return Node("hardlink", target=target)


def directory(mode: int = 0o755, **kw: object) -> Node:
    return Node("dir", mode=mode, **kw)  # type: ignore[arg-type]


WHITEOUT = Node("whiteout")
OPAQUE = Node("opaque")

Layer = dict[str, "bytes | str | Node"]

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(files: Layer, *, parents: bool = True) -> bytes:
    raw = io.BytesIO()
    made: set[str] = set()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, spec in files.items():
            node = spec if isinstance(spec, Node) else Node(content=_bytes(spec))
            parts = name.strip("/").split("/")
            if parents:
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent not in made and parent not in files:
                        made.add(parent)
                        info = tarfile.TarInfo(parent)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                        tar.addfile(info)
            if node.kind in ("whiteout", "opaque"):
                leaf = ".wh..wh..opq" if node.kind == "opaque" else f".wh.{parts[-1]}"
                path = (
                    "/".join([*parts[:-1], leaf]) if node.kind == "whiteout" else f"{name}/{leaf}"
                )
                info = tarfile.TarInfo(path.lstrip("/"))
                info.mode, info.mtime = 0o644, 1_700_000_000
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.type = _TYPES[node.kind]
            default_mode = {"dir": 0o755, "symlink": 0o777}.get(node.kind, 0o644)
            info.mode = default_mode if node.mode is None else node.mode
            info.uid, info.gid, info.mtime = node.uid, node.gid, 1_700_000_000
            if node.kind in ("symlink", "hardlink"):
                info.linkname = node.target
            if node.kind in ("char", "block"):
                info.devmajor, info.devminor = node.major, node.minor
            if node.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                    for k, v in node.xattrs.items()
                }
            if node.kind == "dir":
                made.add(name.strip("/"))
            if node.kind == "file":
                info.size = len(node.content)
                tar.addfile(info, io.BytesIO(node.content))
            else:
                tar.addfile(info)
    return raw.getvalue()


def _bytes(spec: bytes | str | Node) -> bytes:
    if isinstance(spec, str):
        return spec.encode()
    assert isinstance(spec, bytes)
    return spec


def compress(tar: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(tar, compresslevel=1, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(tar)
    return tar


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_blob(layout: Path, data: bytes) -> str:
    digest = sha(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


@dataclass(frozen=True)
class TreeImage:
    layout: Path
    ref: str
    manifest_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]
    tars: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return f"oci:{self.layout}:{self.ref}"

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":")[1]


def build_tree_image(
    layout: Path,
    layers: list[Layer],
    *,
    ref: str = "latest",
    compression: str | list[str] = "gzip",
    labels: dict[str, str] | None = None,
    created: str | None = "2026-01-01T00:00:00Z",
    parents: bool = True,
    diff_ids: list[str] | None = None,
    run: dict[str, object] | None = None,
) -> TreeImage:
    """Write an image with one layer per dict of *layers* into the OCI layout
    *layout* under *ref*.  *diff_ids* overrides the config's (to test checks);
    *run* adds to its ``config`` (``Cmd``, ``Env``, ...)."""
    return image_from_tars(
        layout,
        [make_tar(files, parents=parents) for files in layers],
        ref=ref,
        compression=compression,
        labels=labels,
        created=created,
        diff_ids=diff_ids,
        run=run,
    )


def image_from_tars(
    layout: Path,
    tars: list[bytes],
    *,
    ref: str = "latest",
    compression: str | list[str] = "gzip",
    labels: dict[str, str] | None = None,
    created: str | None = "2026-01-01T00:00:00Z",
    diff_ids: list[str] | None = None,
    run: dict[str, object] | None = None,
) -> TreeImage:
    """An image whose layers are the given tar archives."""
    layout.mkdir(parents=True, exist_ok=True)
    kinds = compression if isinstance(compression, list) else [compression] * len(tars)
    descs, real_diff_ids = [], []
    for tar, how in zip(tars, kinds, strict=True):
        blob = compress(tar, how)
        descs.append(
            {"mediaType": LAYER_TYPES[how], "digest": write_blob(layout, blob), "size": len(blob)}
        )
        real_diff_ids.append(sha(tar))
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": labels or {}, **(run or {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or real_diff_ids},
    }
    if created:
        config["created"] = created
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": write_blob(layout, config_bytes),
            "size": len(config_bytes),
        },
        "layers": descs,
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = write_blob(layout, manifest_bytes)
    index_path = layout / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    key = "org.opencontainers.image.ref.name"
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(key) != ref]
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {key: ref},
        }
    )
    index_path.write_text(json.dumps(index))
    return TreeImage(
        layout,
        ref,
        manifest_digest,
        tuple(str(d["digest"]) for d in descs),
        tuple(real_diff_ids),
        tuple(tars),
    )
