"""Registry image references, parsed and normalised as containers/image does.

``busybox`` becomes ``docker.io/library/busybox:latest``; the first path
component is a registry host when it contains a dot or a colon or is
``localhost``; a reference may carry a tag, a digest, or both (the digest wins
when pulling, the tag is kept for display and for pushing).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from atoll.errors import InvalidReferenceError
from atoll.oci.digest import Digest

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_DEFAULT_HOSTS = {"index.docker.io", "registry-1.docker.io"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255


class ImageReference(NamedTuple):
    """A registry image name: ``REGISTRY/REPOSITORY[:TAG][@DIGEST]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        if not text or text != text.strip():
            raise InvalidReferenceError(f"invalid image reference {text!r}: empty or has spaces")
        rest = text
        digest: Digest | None = None
        if "@" in rest:
            rest, _, digest_text = rest.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except InvalidReferenceError as exc:
                raise InvalidReferenceError(f"invalid image reference {text!r}: {exc}") from None
        tag: str | None = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise InvalidReferenceError(
                    f"invalid image reference {text!r}: bad tag {tag!r} "
                    "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
                )
        registry, repository = _split_name(rest, text)
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """Registry and repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> ImageReference:
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
        return self._replace(tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> ImageReference:
        return self._replace(digest=digest)

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _split_name(name: str, original: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: bad registry host {registry!r}"
            )
        if registry in _LEGACY_DEFAULT_HOSTS:
            registry = DEFAULT_REGISTRY
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not path:
        raise InvalidReferenceError(f"invalid image reference {original!r}: no repository")
    for component in path.split("/"):
        if not _COMPONENT_RE.match(component):
            if component.lower() != component and _COMPONENT_RE.match(component.lower()):
                raise InvalidReferenceError(
                    f"invalid image reference {original!r}: repository names must be lowercase"
                )
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: bad path component {component!r}"
            )
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: name longer than {_MAX_NAME} characters"
        )
    return registry, path
