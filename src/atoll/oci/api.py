"""What the distribution API client hands back, and the token scopes it asks for
(``repository:NAME:ACTIONS``, as the distribution token specification spells them)."""

# No "from __future__ import annotations" here: NamedTuple types each field from
# its annotation, and compiles a string one when the class is made (about 20 µs a
# field, at every start of an image copy; tests/cli/test_imports.py).
from typing import NamedTuple

from atoll.oci.digest import Digest
from atoll.oci.plainhttp import URL


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def delete_scope(repository: str) -> str:
    return f"repository:{repository}:delete"


class FetchedManifest(NamedTuple):
    """A manifest as the registry sent it, with its digest."""

    raw: bytes
    #: The ``Content-Type`` the registry sent, without parameters.
    media_type: str | None
    #: sha256 of *raw*.
    digest: Digest


class ManifestHead(NamedTuple):
    """What a manifest HEAD tells: its digest, media type and size, where sent."""

    digest: Digest | None
    media_type: str | None
    size: int | None


class UploadSession(NamedTuple):
    """An open blob upload in *repository*."""

    repository: str
    #: Where the next PATCH or the final PUT goes (the last ``Location``).
    url: URL


class MountResult(NamedTuple):
    """The answer to a cross-repository mount."""

    mounted: bool
    #: When the registry did not mount, the upload session it opened instead.
    session: UploadSession | None = None
