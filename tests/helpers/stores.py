"""Store test helpers: importing test images into a store, walking checked-out trees."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import ImageManifest, parse_manifest
from atoll.oci.transports import ImageName
from atoll.oci.transports.layout import LayoutSource
from atoll.store import ImportResult, Store
from helpers.treeimage import TreeImage


def open_image(image: TreeImage) -> tuple[LayoutSource, ImageManifest, bytes]:
    source = LayoutSource(ImageName.parse(image.name), SystemContext())
    raw, declared = source.get_manifest(None)
    manifest = parse_manifest(raw, declared, where=image.name)
    assert isinstance(manifest, ImageManifest)
    with source.open_blob(manifest.config) as chunks:
        config_raw = b"".join(chunks)
    return source, manifest, config_raw


def import_image(store: Store, image: TreeImage, **kw: Any) -> ImportResult:
    source, manifest, config_raw = open_image(image)
    with source:
        return store.import_image(
            source,
            manifest,
            config_raw,
            image=image.name,
            manifest_digest=Digest.parse(image.manifest_digest),
            **kw,
        )


def walk(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree that a checkout must reproduce (mtimes aside):
    path -> (type, mode, uid, gid, xattrs, content sha256 or symlink target)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            [*dirnames, *filenames, ""] if dirpath == str(root) else [*dirnames, *filenames]
        ):
            path = Path(dirpath, name) if name else Path(dirpath)
            st = path.lstat()
            fmt = stat.S_IFMT(st.st_mode)
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in os.listxattr(path, follow_symlinks=False)
                )
            )
            if stat.S_ISREG(fmt):
                what: Any = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(fmt):
                what = str(path.readlink())
            elif stat.S_ISCHR(fmt) or stat.S_ISBLK(fmt):
                what = st.st_rdev
            else:
                what = None
            mode = 0o777 if stat.S_ISLNK(fmt) else stat.S_IMODE(st.st_mode)
            out[str(path.relative_to(root))] = (fmt, mode, st.st_uid, st.st_gid, xattrs, what)
    return out
