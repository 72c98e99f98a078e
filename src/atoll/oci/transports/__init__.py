"""Transports: where images live.  ``TRANSPORT:DETAILS`` names, as skopeo spells them.

======================  ==============================================
``docker://REF``        a registry speaking the OCI distribution API
``oci:DIR[:REF]``       an OCI image layout directory (``index.json``)
``oci-archive:F[:REF]`` a tar file holding an OCI image layout
``dir:DIR``             manifest and blobs as plain files, one image
``containers-storage:`` podman's local image store (through podman)
======================  ==============================================

bootc names the same transports a little differently (``--transport``, and
an origin's ``transport``): ``registry`` for ``docker``, and a bare image
name is a registry's.  :data:`BOOTC_TRANSPORTS` is the table of those names;
:func:`parse_bootc_name` reads a name written either way.
"""

from __future__ import annotations

import importlib
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

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


class ImageTransport(StrEnum):
    """bootc's names for the transports."""

    REGISTRY = "registry"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DIR = "dir"
    CONTAINERS_STORAGE = "containers-storage"


#: bootc's name of each transport -> the transport.
BOOTC_TRANSPORTS: dict[ImageTransport, Transport] = {
    ImageTransport.REGISTRY: Transport.DOCKER,
    ImageTransport.OCI: Transport.OCI,
    ImageTransport.OCI_ARCHIVE: Transport.OCI_ARCHIVE,
    ImageTransport.DIR: Transport.DIR,
    ImageTransport.CONTAINERS_STORAGE: Transport.CONTAINERS_STORAGE,
}
_BOOTC_NAME_OF = {transport: name for name, transport in BOOTC_TRANSPORTS.items()}

_TRANSPORT_NAMES = frozenset(t.value for t in Transport)
_HOST_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?$")


def _names_a_registry(text: str) -> bool:
    """Whether *text* starts with a registry host (``HOST.DOMAIN``, ``HOST:PORT``
    or ``localhost``) followed by a repository, as a bare image name does."""
    host, slash, _ = text.partition("/")
    if not slash or not _HOST_RE.match(host):
        return False  # also ./DIR and ../DIR, which are paths
    return "." in host or ":" in host or host == "localhost"


_REF_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+(?:[:/@+][a-zA-Z0-9._-]+)*$")


class ImageName(NamedTuple):
    """A transport and what it needs to find one image."""

    transport: Transport
    reference: ImageReference | None = None
    path: Path | None = None
    ref_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageName:
        transport_text, sep, rest = text.partition(":")
        if transport_text not in _TRANSPORT_NAMES and _names_a_registry(text):
            # A bare REGISTRY/REPO[:TAG] is docker://, as podman and bootc read it.
            return cls(Transport.DOCKER, reference=ImageReference.parse(text))
        if not sep:
            raise InvalidReferenceError(
                f"invalid image name {text!r}: no transport",
                hint="write e.g. registry/repo:tag, docker://registry/repo:tag, oci:DIR:TAG, "
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
            rest = rest[2:]
        return cls._of(transport, rest, text)

    @classmethod
    def _of(cls, transport: Transport, rest: str, text: str) -> ImageName:
        """The name of *transport* whose details are *rest* (*text*: for messages)."""
        if transport is Transport.DOCKER:
            return cls(transport, reference=ImageReference.parse(rest))
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

    @property
    def bootc_transport(self) -> ImageTransport:
        return _BOOTC_NAME_OF[self.transport]

    @property
    def details(self) -> str:
        """What follows the transport: a registry's reference, a path and tag."""
        if self.reference is not None and self.transport is Transport.DOCKER:
            return str(self.reference)
        return str(self).split(":", 1)[1]

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            return f"docker://{self.reference}"
        if self.transport is Transport.CONTAINERS_STORAGE:
            return f"containers-storage:{self.reference}"
        out = f"{self.transport.value}:{self.path}"
        if self.ref_name:
            out += f":{self.ref_name}"
        return out


def parse_bootc_name(text: str, transport: str | None = None) -> ImageName:
    """A name as ``bootc switch`` takes it: IMAGE with *transport* (bootc's
    name, default ``registry``), or ``TRANSPORT:DETAILS`` in bootc's or
    skopeo's spelling (``registry:REF``, ``docker://REF``, ``oci:DIR:TAG``, …)."""
    if transport is None:
        prefix, sep, rest = text.partition(":")
        if text.startswith("docker://"):
            return ImageName.parse(text)
        if sep and prefix in BOOTC_TRANSPORTS:
            transport, text = prefix, rest
    try:
        kind = BOOTC_TRANSPORTS[ImageTransport(transport or ImageTransport.REGISTRY)]
    except ValueError:
        known = ", ".join(t.value for t in ImageTransport)
        raise InvalidReferenceError(f"unknown transport {transport!r} (known: {known})") from None
    try:
        return ImageName._of(kind, text, text)
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(f"invalid image {text!r}: {exc}") from None


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
