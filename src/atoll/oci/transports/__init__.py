"""Transports: where images live.  ``TRANSPORT:DETAILS`` names, as skopeo spells them.

======================  ==============================================
``docker://REF``        a registry speaking the OCI distribution API
``oci:DIR[:REF]``       an OCI image layout directory (``index.json``)
``oci-archive:F[:REF]`` a tar file holding an OCI image layout
``dir:DIR``             manifest and blobs as plain files, one image
``containers-storage:`` podman's local image store (through podman)
======================  ==============================================
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.errors import InvalidReferenceError
from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.oci.transports.base import CHUNK_SIZE, ImageDestination, ImageSource, MountOrigin


class Transport(StrEnum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DIR = "dir"
    CONTAINERS_STORAGE = "containers-storage"


_REF_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+(?:[:/@+][a-zA-Z0-9._-]+)*$")


@dataclass(frozen=True)
class ImageName:
    """A transport and what it needs to find one image."""

    transport: Transport
    reference: ImageReference | None = None
    path: Path | None = None
    ref_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageName:
        transport_text, sep, rest = text.partition(":")
        if not sep:
            raise InvalidReferenceError(
                f"invalid image name {text!r}: no transport",
                hint="write e.g. docker://registry/repo:tag, oci:DIR:TAG, "
                "oci-archive:FILE, dir:DIR",
            )
        try:
            transport = Transport(transport_text)
        except ValueError:
            known = ", ".join(t.value for t in Transport)
            raise InvalidReferenceError(
                f"invalid image name {text!r}: unknown transport {transport_text!r} "
                f"(known: {known})"
            ) from None
        if transport is Transport.DOCKER:
            if not rest.startswith("//"):
                raise InvalidReferenceError(
                    f"invalid image name {text!r}: docker references start with docker://"
                )
            return cls(transport, reference=ImageReference.parse(rest[2:]))
        if transport is Transport.CONTAINERS_STORAGE:
            if rest.startswith("["):
                raise InvalidReferenceError(
                    f"invalid image name {text!r}: storage specifiers are not supported"
                )
            return cls(transport, reference=ImageReference.parse(rest))
        if not rest:
            raise InvalidReferenceError(f"invalid image name {text!r}: no path")
        if transport is Transport.DIR:
            return cls(transport, path=Path(rest))
        path_text, sep, ref_name = rest.partition(":")
        if not path_text:
            raise InvalidReferenceError(f"invalid image name {text!r}: no path")
        if sep and not _REF_NAME_RE.match(ref_name):
            raise InvalidReferenceError(f"invalid image name {text!r}: bad reference {ref_name!r}")
        return cls(transport, path=Path(path_text), ref_name=ref_name or None)

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            return f"docker://{self.reference}"
        if self.transport is Transport.CONTAINERS_STORAGE:
            return f"containers-storage:{self.reference}"
        out = f"{self.transport.value}:{self.path}"
        if self.ref_name:
            out += f":{self.ref_name}"
        return out


#: For each transport: its module, its source class and its destination class.
#: Modules are imported on first use, so ``docker://`` alone loads httpx.
_PLUGINS: dict[Transport, tuple[str, str, str]] = {
    Transport.DOCKER: ("docker", "DockerSource", "DockerDestination"),
    Transport.OCI: ("layout", "LayoutSource", "LayoutDestination"),
    Transport.OCI_ARCHIVE: ("archive", "ArchiveSource", "ArchiveDestination"),
    Transport.DIR: ("dir", "DirSource", "DirDestination"),
    Transport.CONTAINERS_STORAGE: ("storage", "StorageSource", "StorageDestination"),
}


def _plugin(transport: Transport, index: int) -> type[Any]:
    module = importlib.import_module(f"{__name__}.{_PLUGINS[transport][0]}")
    cls: type[Any] = getattr(module, _PLUGINS[transport][index])
    return cls


def open_source(name: ImageName, ctx: SystemContext) -> ImageSource:
    source: ImageSource = _plugin(name.transport, 1)(name, ctx)
    return source


def open_destination(name: ImageName, ctx: SystemContext) -> ImageDestination:
    destination: ImageDestination = _plugin(name.transport, 2)(name, ctx)
    return destination


__all__ = [
    "CHUNK_SIZE",
    "ImageDestination",
    "ImageName",
    "ImageSource",
    "MountOrigin",
    "Transport",
    "open_destination",
    "open_source",
]
