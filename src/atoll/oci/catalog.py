"""Listing and deleting images: tags of a repository or of an OCI layout."""

from __future__ import annotations

from dataclasses import dataclass

from atoll.errors import ConflictError, UnsupportedError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName, Transport


def list_tags(name: ImageName, ctx: SystemContext) -> list[str]:
    if name.transport is Transport.DOCKER and name.reference is not None:
        from atoll.oci.pullsource import read_image

        # A read: registries.conf's mirrors and location apply, as to a pull by tag.
        return read_image(name.reference, ctx, lambda client, repo: client.list_tags(repo))
    if name.transport is Transport.OCI and name.path is not None:
        from atoll.oci.transports.layout import list_ref_names

        return list_ref_names(name.path)
    raise UnsupportedError(f"cannot list tags of {name}: only docker:// and oci: hold tags")


@dataclass(frozen=True)
class Deletion:
    """What ``image delete`` removed."""

    digest: str
    #: Every tag that pointed at the digest and went with it (a registry deletes
    #: a manifest by digest, so all its tags go at once).
    tags: tuple[str, ...] = ()


def delete_image(name: ImageName, ctx: SystemContext, *, all_tags: bool = False) -> Deletion:
    """Delete what *name* points at.  In a registry, refuse (ConflictError) when
    other tags share the digest, unless *all_tags*: deleting removes them too."""
    if name.transport is Transport.DOCKER and name.reference is not None:
        from atoll.oci.client import RegistryClient

        ref = name.reference
        with RegistryClient(ref.registry, ctx) as client:
            digest = client.manifest_digest(ref.repository, ref.manifest_ref)
            tags = tuple(
                tag
                for tag in client.list_tags(ref.repository)
                if tag == ref.tag or client.manifest_digest(ref.repository, tag) == digest
            )
            others = [tag for tag in tags if tag != ref.tag]
            if others and not all_tags:
                raise ConflictError(
                    f"cannot delete {name}: the registry deletes by digest, and {digest} "
                    f"is also tagged {', '.join(others)}, which would go too",
                    hint="pass --all-tags to delete all of them",
                )
            client.delete_manifest(ref.repository, str(digest))
            return Deletion(str(digest), tags)
    if name.transport is Transport.OCI and name.path is not None:
        from atoll.oci.transports.layout import delete_ref

        removed = delete_ref(name.path, name.ref_name)
        return Deletion(str(removed), (removed.ref_name,) if removed.ref_name else ())
    raise UnsupportedError(f"cannot delete {name}: only docker:// and oci: images can be deleted")
