"""Small bootable-looking OS images for device tests, written without atoll's code.

An image has a fake kernel and initramfs under ``usr/lib/modules/KVER/``, an
os-release, a few files in /usr, /etc and /var, and whatever a test adds.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

KVER = "6.1.0-atoll"


@dataclass(frozen=True)
class FileSpec:
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    symlink: str | None = None
    directory: bool = False


Spec = dict[str, "bytes | str | FileSpec | None"]


def base_files(version: str, *, kernel: bool = True) -> Spec:
    files: Spec = {
        "usr/lib/os-release": f'NAME="atoll test"\nVERSION_ID="{version}"\n',
        "etc/os-release": FileSpec(symlink="../usr/lib/os-release"),
        "usr/bin/tool": FileSpec(b"#!/bin/sh\necho tool " + version.encode() + b"\n", 0o755),
        "usr/share/doc/readme": "shared by every version\n",
        "etc/hostname": "device\n",
        "etc/app.conf": f"setting = default-{version}\n",
        "etc/ssh/sshd_config": "PermitRootLogin no\n",
        "var/lib/app/seed": "seeded at install\n",
    }
    if kernel:
        files[f"usr/lib/modules/{KVER}/vmlinuz"] = FileSpec(b"KERNEL " + version.encode(), 0o644)
        files[f"usr/lib/modules/{KVER}/initramfs.img"] = b"INITRAMFS " + version.encode()
    return files


def _tar(files: Spec) -> bytes:
    raw = io.BytesIO()
    dirs: set[str] = set()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                # A parent the test lists itself (say, a symlink) is left as it is.
                if parent not in dirs and parent not in files:
                    dirs.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            spec = files[name]
            if spec is None:  # a whiteout
                tar.addfile(_info("/".join([*parts[:-1], f".wh.{parts[-1]}"]), 0, 0o644))
                continue
            if not isinstance(spec, FileSpec):
                spec = FileSpec(spec.encode() if isinstance(spec, str) else spec)
            info = _info(name, len(spec.content), spec.mode, spec.uid, spec.gid)
            if spec.symlink is not None:
                info.type, info.linkname, info.size = tarfile.SYMTYPE, spec.symlink, 0
                tar.addfile(info)
            elif spec.directory:
                info.type, info.size = tarfile.DIRTYPE, 0
                dirs.add(name)
                tar.addfile(info)
            else:
                tar.addfile(info, io.BytesIO(spec.content))
    return raw.getvalue()


def _info(name: str, size: int, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = size, mode, uid, gid
    info.mtime = 1_700_000_000
    return info


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def build_os_image(
    layout: Path,
    ref: str,
    *,
    version: str,
    add: Spec | None = None,
    kernel: bool = True,
) -> str:
    """Write an image to the OCI layout at *layout* under *ref*; return its digest.

    Layer 1 holds the base files, layer 2 the test's additions (a value of None
    whites the path out)."""
    layers = [base_files(version, kernel=kernel)]
    if add:
        layers.append(add)
    layer_refs: list[tuple[str, int]] = []
    diff_ids = []
    for files in layers:
        tar = _tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, mtime=0)
        layer_refs.append((_blob(layout, gz), len(gz)))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": f"2026-01-0{min(int(version.split('.', maxsplit=1)[0]), 9)}T00:00:00Z",
        "config": {
            "Labels": {"org.opencontainers.image.version": version, "containers.bootc": "1"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return publish_image(layout, ref, config, layer_refs)


def publish_image(
    layout: Path, ref: str, config: dict[str, object], layers: list[tuple[str, int]]
) -> str:
    """Write *config* and a manifest naming it and the gzip *layers* (already in
    the layout's blobs), and point *ref* in ``index.json`` at it; return its digest."""
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _blob(layout, config_bytes),
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": size,
                }
                for digest, size in layers
            ],
        }
    ).encode()
    digest = _blob(layout, manifest)
    index_path = layout / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "manifests": []}
    )
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != ref
    ] + [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": ref},
        }
    ]
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path.write_text(json.dumps(index))
    return digest


def tree_spec(root: Path) -> Spec:
    """Every file and symlink under *root* as a spec (modes kept), e.g. what
    ``atoll.units.install_atoll`` and ``install_units`` wrote into a staging tree."""
    spec: Spec = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            spec[rel] = FileSpec(symlink=str(path.readlink()))
        elif path.is_file():
            spec[rel] = FileSpec(path.read_bytes(), path.stat().st_mode & 0o7777)
    return spec


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An OCI layout with versions 1.0 and 2.0 (refs ``1`` and ``2``) of an OS image."""
    layout = tmp_path / "images"
    for ref in ("1", "2"):
        build_os_image(layout, ref, version=f"{ref}.0")
    return layout
