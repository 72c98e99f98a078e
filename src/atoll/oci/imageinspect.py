"""``atoll image inspect``: what an image is, read from its manifest and config.

The JSON document (``atoll image inspect --json``) is stable; its fields follow
``skopeo inspect`` where skopeo has one, and add atoll's own (``Bootable``,
``Version``, ``MediaType``)::

    {"Name": "...", "Digest": "sha256:...", "RepoTags": [...], "Created": "...",
     "Architecture": "amd64", "Os": "linux", "Variant": null,
     "Labels": {...}, "Env": [...], "Layers": ["sha256:..."],
     "LayersData": [{"MIMEType": "...", "Digest": "...", "Size": 1, "Annotations": {}}],
     "MediaType": "...", "Version": "1.2" | null, "Bootable": false}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atoll.errors import DigestMismatchError, ManifestError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import (
    ImageConfig,
    ImageIndex,
    ImageManifest,
    Platform,
    parse_config,
    parse_manifest,
)
from atoll.oci.transports import ImageName, Transport, open_source
from atoll.oci.transports.base import ImageSource


@dataclass(frozen=True)
class ImageInspection:
    name: str
    digest: Digest
    media_type: str
    manifest: ImageManifest
    config: ImageConfig
    tags: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "Name": self.name,
            "Digest": str(self.digest),
            "RepoTags": list(self.tags),
            "Created": cfg.created,
            "Architecture": cfg.architecture,
            "Os": cfg.os,
            "Variant": cfg.variant,
            "Labels": dict(cfg.labels),
            "Env": list(cfg.env),
            "Layers": [str(layer.digest) for layer in self.manifest.layers],
            "LayersData": [
                {
                    "MIMEType": layer.media_type,
                    "Digest": str(layer.digest),
                    "Size": layer.size,
                    "Annotations": dict(layer.annotations),
                }
                for layer in self.manifest.layers
            ],
            "MediaType": self.media_type,
            "Version": cfg.version,
            "Bootable": cfg.bootable,
        }


def read_raw_manifest(name: ImageName, ctx: SystemContext) -> bytes:
    with open_source(name, ctx) as source:
        raw, _ = source.get_manifest(None)
        return raw


def select_manifest(
    source: ImageSource, platform: Platform | None
) -> tuple[ImageManifest | ImageIndex, ImageManifest]:
    """The top-level manifest and the image manifest for *platform* (the same
    when the top level is not an index); an instance is verified by digest."""
    raw, declared = source.get_manifest(None)
    top = parse_manifest(raw, declared, where=source.description)
    if not isinstance(top, ImageIndex):
        return top, top
    desc = top.select(platform)
    raw, declared = source.get_manifest(desc.digest)
    if Digest.of(raw, desc.digest.algorithm) != desc.digest:
        raise DigestMismatchError(
            f"{source.description}: manifest {desc.digest} does not match its digest"
        )
    child = parse_manifest(raw, declared or desc.media_type, where=source.description)
    if not isinstance(child, ImageManifest):
        raise ManifestError(f"{source.description}: nested indexes are not supported")
    return top, child


def inspect_image(
    name: ImageName, ctx: SystemContext, *, list_tags: bool = True
) -> ImageInspection:
    with open_source(name, ctx) as source:
        top, manifest = select_manifest(source, ctx.platform)
        config = parse_config(read_config(source, manifest), where=source.description)
    tags: tuple[str, ...] = ()
    if list_tags and name.transport is Transport.DOCKER:
        from atoll.oci.catalog import list_tags as _list_tags

        tags = tuple(_list_tags(name, ctx))
    display = str(name.reference.name) if name.reference is not None else str(name)
    return ImageInspection(
        name=display,
        digest=top.digest,
        media_type=top.media_type,
        manifest=manifest,
        config=config,
        tags=tags,
    )


def read_config(source: ImageSource, manifest: ImageManifest) -> bytes:
    from atoll.oci.digest import Verifier

    desc = manifest.config
    verifier = Verifier(desc.digest, desc.size, f"{source.description}: config {desc.digest}")
    parts = []
    with source.open_blob(desc) as chunks:
        for chunk in chunks:
            verifier.update(chunk)
            parts.append(chunk)
    verifier.verify()
    return b"".join(parts)
