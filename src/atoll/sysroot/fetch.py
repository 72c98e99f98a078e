"""Reading an OS image for a device: the manifest for this machine and its config."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imageinspect import read_config, select_manifest
from atoll.oci.manifest import ImageConfig, ImageManifest, parse_config, require_image_config
from atoll.oci.transports import ImageName, ImageSource, open_source
from atoll.progress import NullProgress
from atoll.store import ImportResult, Store
from atoll.store.partial import import_image
from atoll.store.transferreport import TransferReport


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


def import_remote(
    store: Store,
    name: ImageName,
    ctx: SystemContext,
    *,
    partial: bool = True,
    delta_from: Digest | None = None,
) -> tuple[ImportResult, TransferReport]:
    """Import *name* into *store* without a sysroot (no ref), each layer on its
    path (:mod:`atoll.store.partial`; *partial* False: every layer whole;
    *delta_from*: use a delta from that image where one is published)."""
    with open_image(name, ctx) as (source, image):
        return import_image(
            store,
            source,
            image.manifest,
            image.config_raw,
            image=str(name),
            manifest_digest=image.digest,
            progress=NullProgress(),
            partial=partial,
            delta_from=delta_from,
        )
