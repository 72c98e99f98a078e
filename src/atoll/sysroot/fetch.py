"""Reading an OS image for a device: the manifest for this machine and its config."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.inspect import read_config, select_manifest
from atoll.oci.manifest import ImageConfig, ImageManifest, parse_config, require_image_config
from atoll.oci.transports import ImageName, ImageSource, open_source


@dataclass(frozen=True)
class RemoteImage:
    name: ImageName
    manifest: ImageManifest
    #: The digest of the image manifest for this platform (bootc's imageDigest).
    digest: Digest
    config_raw: bytes
    config: ImageConfig

    @property
    def version(self) -> str | None:
        return self.config.version


@contextlib.contextmanager
def open_image(name: ImageName, ctx: SystemContext) -> Iterator[tuple[ImageSource, RemoteImage]]:
    """Open *name*, pick this platform's image and read its config (verified)."""
    with open_source(name, ctx) as source:
        _, manifest = select_manifest(source, ctx.platform)
        require_image_config(manifest, source.description)
        config_raw = read_config(source, manifest)
        config = parse_config(config_raw, where=source.description)
        yield source, RemoteImage(name, manifest, manifest.digest, config_raw, config)
