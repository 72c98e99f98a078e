"""Listing and deleting images: tags of a repository or of an OCI layout."""

from __future__ import annotations

from atoll.errors import UnsupportedError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName, Transport


def list_tags(name: ImageName, ctx: SystemContext) -> list[str]:
    if name.transport is Transport.DOCKER and name.reference is not None:
        from atoll.oci.client import RegistryClient

        with RegistryClient(name.reference.registry, ctx) as client:
            return client.list_tags(name.reference.repository)
    if name.transport is Transport.OCI and name.path is not None:
        from atoll.oci.transports.layout import list_ref_names

        return list_ref_names(name.path)
    raise UnsupportedError(f"cannot list tags of {name}: only docker:// and oci: hold tags")


def delete_image(name: ImageName, ctx: SystemContext) -> str:
    """Delete what *name* points at; returns the digest that was deleted."""
    if name.transport is Transport.DOCKER and name.reference is not None:
        from atoll.oci.client import RegistryClient

        ref = name.reference
        with RegistryClient(ref.registry, ctx) as client:
            return str(client.delete_manifest(ref.repository, ref.manifest_ref))
    if name.transport is Transport.OCI and name.path is not None:
        from atoll.oci.transports.layout import delete_ref

        return str(delete_ref(name.path, name.ref_name))
    raise UnsupportedError(f"cannot delete {name}: only docker:// and oci: images can be deleted")
