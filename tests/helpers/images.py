"""Build small OCI images for tests without using atoll's own code, so tests can
use them as independent input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class BuiltImage:
    layout: Path
    ref_name: str
    manifest_digest: str
    manifest: bytes
    config_digest: str
    layer_digests: tuple[str, ...]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = _sha(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """Return (uncompressed tar, gzip) for a layer holding *files*."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, mtime=0)


def _index_add(layout: Path, desc: dict[str, object]) -> None:
    index_path = layout / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    name = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")  # type: ignore[attr-defined]
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != name
    ]
    index["manifests"].append(desc)
    index_path.write_text(json.dumps(index))


def build_image(
    layout: Path,
    ref_name: str = "latest",
    *,
    layers: int = 2,
    layer_size: int = 4096,
    seed: str = "atoll",
    labels: dict[str, str] | None = None,
    arch: str = "amd64",
    tag: bool = True,
) -> BuiltImage:
    """An OCI image with *layers* layers of pseudo-random content."""
    layout.mkdir(parents=True, exist_ok=True)
    layer_descs = []
    diff_ids = []
    for i in range(layers):
        content = _pseudo_random(f"{seed}-{i}", layer_size)
        tar_bytes, gz = make_layer({f"layer{i}/data.bin": content, f"layer{i}/name": seed.encode()})
        layer_descs.append(
            {"mediaType": OCI_LAYER_GZIP, "digest": _write_blob(layout, gz), "size": len(gz)}
        )
        diff_ids.append(_sha(tar_bytes))
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Labels": labels or {}, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"test layer {i}"} for i in range(layers)],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = _write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = json.dumps(manifest, indent=3).encode()  # not canonical on purpose
    manifest_digest = _write_blob(layout, manifest_bytes)
    if tag:
        _index_add(
            layout,
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            },
        )
    return BuiltImage(
        layout,
        ref_name,
        manifest_digest,
        manifest_bytes,
        config_digest,
        tuple(str(d["digest"]) for d in layer_descs),
    )


def build_multiarch(layout: Path, ref_name: str = "latest") -> tuple[str, dict[str, BuiltImage]]:
    """An index with amd64 and arm64 images; returns (index digest, images by arch)."""
    images = {
        arch: build_image(layout, ref_name, seed=f"multi-{arch}", arch=arch, tag=False)
        for arch in ("amd64", "arm64")
    }
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": img.manifest_digest,
                "size": len(img.manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
            for arch, img in images.items()
        ],
    }
    index_bytes = json.dumps(index).encode()
    digest = _write_blob(layout, index_bytes)
    _index_add(
        layout,
        {
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": len(index_bytes),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        },
    )
    return digest, images


def _pseudo_random(seed: str, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out.extend(block)
    return bytes(out[:size])


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def list_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()
    )
