"""``signedIdentity``: which docker-references in a signature are acceptable for an image.

The kinds and their meaning follow containers-policy.json(5):

=========================  =====================================================
``matchExact``             the signed reference equals the image's (tag or digest)
``matchRepoDigestOrExact`` by digest: same repository; by tag: equal (default)
``matchRepository``        same repository, any tag or digest
``exactReference``         the signed reference equals ``dockerReference``
``exactRepository``        the signed repository equals ``dockerRepository``
``remapIdentity``          replace ``prefix`` by ``signedPrefix`` in the image's
                           name, then ``matchRepoDigestOrExact``
=========================  =====================================================

References are compared normalised (``busybox`` is ``docker.io/library/busybox``);
a signed reference without a tag or digest never matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from atoll.errors import InvalidReferenceError
from atoll.oci.reference import ImageReference


class IdentityKind(StrEnum):
    MATCH_EXACT = "matchExact"
    MATCH_REPO_DIGEST_OR_EXACT = "matchRepoDigestOrExact"
    MATCH_REPOSITORY = "matchRepository"
    EXACT_REFERENCE = "exactReference"
    EXACT_REPOSITORY = "exactRepository"
    REMAP_IDENTITY = "remapIdentity"


@dataclass(frozen=True)
class SignedIdentity:
    kind: IdentityKind = IdentityKind.MATCH_REPO_DIGEST_OR_EXACT
    #: exactReference's dockerReference or exactRepository's dockerRepository.
    reference: str | None = None
    #: remapIdentity's prefix and signedPrefix.
    prefix: str | None = None
    signed_prefix: str | None = None

    def matches(self, image: ImageReference, signed: str) -> bool:
        kind = self.kind
        if kind is IdentityKind.MATCH_EXACT:
            # By tag or by digest, as containers/image: an image named by digest
            # matches a signature for exactly that repository and digest.
            parsed = parse_signed(signed)
            return parsed is not None and str(parsed) == str(image)
        if kind is IdentityKind.MATCH_REPO_DIGEST_OR_EXACT:
            return match_repo_digest_or_exact(image, signed)
        if kind is IdentityKind.MATCH_REPOSITORY:
            parsed = parse_signed(signed)
            return parsed is not None and parsed.name == image.name
        if kind is IdentityKind.EXACT_REFERENCE:
            parsed = parse_signed(signed)
            wanted = parse_signed(self.reference or "")
            return parsed is not None and wanted is not None and str(parsed) == str(wanted)
        if kind is IdentityKind.EXACT_REPOSITORY:
            parsed = parse_signed(signed)
            return parsed is not None and parsed.name == _normal_name(self.reference or "")
        return match_repo_digest_or_exact(self.remap(image), signed)

    def remap(self, image: ImageReference) -> ImageReference:
        prefix, signed_prefix = self.prefix or "", self.signed_prefix or ""
        name = image.name
        if name != prefix and not name.startswith(prefix.rstrip("/") + "/"):
            return image
        remapped = signed_prefix + name[len(prefix) :]
        try:
            target = ImageReference.parse(remapped)
        except InvalidReferenceError:
            return image
        return image._replace(registry=target.registry, repository=target.repository)


def match_repo_digest_or_exact(image: ImageReference, signed: str) -> bool:
    parsed = parse_signed(signed)
    if parsed is None:
        return False
    if image.tag is not None:
        return str(parsed) == str(image)
    return parsed.name == image.name


def parse_signed(text: str) -> ImageReference | None:
    """A signed reference, normalised; None if it is malformed or names no tag or digest."""
    last = text.rsplit("/", 1)[-1]
    if "@" not in text and ":" not in last:
        return None
    try:
        return ImageReference.parse(text)
    except InvalidReferenceError:
        return None


def _normal_name(text: str) -> str | None:
    try:
        return ImageReference.parse(text).name
    except InvalidReferenceError:
        return None
