"""``atoll mirror SRC DST``: keep one repository in step with another (staging → production).

For every tag of SRC (those matching ``--tags REGEX`` when given, searched with
Python's ``re.search``; anchor it with ``^…$``) the manifest digests on both
sides are compared with HEAD requests; only tags whose digest differs, or that
DST lacks, are copied, by digest and with every platform of an index, so DST
serves the very bytes SRC does.  Blobs DST already has are not sent again; on
one registry they are mounted.

Attachment tags (``sha256-HEX.sig`` signatures, ``sha256-HEX.promotion``
records, ``sha256-HEX.att``…) are never mirrored as tags of their own.  With
``with_signatures``, the ``sha256-HEX.sig`` of every digest DST gets (or has
already) is copied too when it differs: signatures stay attached to the same
digest, so a policy that trusts the signer accepts DST's images (the signed
identity still names SRC: see docs/pipeline.md, "Mirroring", for the policy's
``remapIdentity``).

Tags that DST has and SRC does not are left alone (a mirror never deletes).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atoll.errors import AtollError, InvalidInputError, NotFoundError
from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.pullsource import PullEndpoint
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.progress import ProgressSink

#: Tags that are attachments of a digest, not images of their own.
ATTACHMENT_TAG = re.compile(r"^sha256-[0-9a-f]{64}\.[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class MirroredTag:
    tag: str
    digest: str
    #: ``copied``, ``unchanged`` or ``failed``.
    action: str
    #: ``copied``, ``unchanged``, ``none`` (SRC has none) or ``skipped`` (not asked).
    signatures: str = "skipped"
    blobs_copied: int = 0
    bytes_copied: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "digest": self.digest,
            "action": self.action,
            "signatures": self.signatures,
            "blobsCopied": self.blobs_copied,
            "bytesCopied": self.bytes_copied,
            "error": self.error,
        }


@dataclass
class MirrorResult:
    source: str
    destination: str
    tags: list[MirroredTag] = field(default_factory=list)

    @property
    def copied(self) -> int:
        return sum(1 for t in self.tags if t.action == "copied")

    @property
    def failed(self) -> list[MirroredTag]:
        return [t for t in self.tags if t.action == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "copied": self.copied,
            "unchanged": sum(1 for t in self.tags if t.action == "unchanged"),
            "failed": len(self.failed),
            "tags": [t.to_json() for t in self.tags],
        }


def repository_reference(text: str, what: str) -> ImageReference:
    """``docker://HOST/REPO`` (or ``HOST/REPO``) as a repository reference."""
    bare = text.removeprefix("docker://")
    name = ImageName.parse(f"docker://{bare}")
    assert name.reference is not None
    last = bare.rsplit("/", 1)[-1]
    if "@" in bare or ":" in last:
        raise InvalidInputError(
            f"{what} {text}: name a repository, without tag or digest",
            hint="choose tags with --tags REGEX",
        )
    return name.reference._replace(tag=None, digest=None)


def mirror(
    source: ImageReference,
    destination: ImageReference,
    *,
    src_ctx: SystemContext,
    dst_ctx: SystemContext | None = None,
    tags: str | None = None,
    with_signatures: bool = False,
    keep_going: bool = False,
    progress_for: Callable[[str], ProgressSink] | None = None,
) -> MirrorResult:
    """Bring *destination* in step with *source*; see the module docstring."""
    dst_ctx = dst_ctx or src_ctx
    try:
        pattern = re.compile(tags) if tags else None
    except re.error as exc:
        raise InvalidInputError(f"--tags {tags!r}: bad regular expression: {exc}") from None
    result = MirrorResult(source.name, destination.name)
    with (
        PullEndpoint(source, src_ctx) as reads,
        RegistryClient(destination.registry, dst_ctx) as dst,
    ):
        # SRC is read where registries.conf sends its reads (mirrors, location);
        # every later read goes to the endpoint that listed the tags.
        src_tags = reads.read(lambda client, repository: client.list_tags(repository))
        src = reads.client
        source = source._replace(registry=reads.registry, repository=reads.repository)
        try:
            dst_tags = set(dst.list_tags(destination.repository))
        except NotFoundError:
            dst_tags = set()
        src_set = set(src_tags)
        wanted = sorted(
            t
            for t in src_tags
            if not ATTACHMENT_TAG.match(t) and (pattern is None or pattern.search(t))
        )
        for tag in wanted:
            try:
                entry = _mirror_tag(
                    src, dst, source, destination, tag, dst_tags, src_ctx, dst_ctx, progress_for
                )
                if with_signatures:
                    entry = _mirror_signature(
                        src, dst, source, destination, entry, src_set, dst_tags, src_ctx, dst_ctx
                    )
            except AtollError as exc:
                if not keep_going:
                    raise
                entry = MirroredTag(tag, "", "failed", error=exc.message)
            result.tags.append(entry)
    return result


def _head(client: RegistryClient, repository: str, tag: str) -> Digest | None:
    try:
        return client.head_manifest(repository, tag).digest
    except NotFoundError:
        return None


def _mirror_tag(
    src: RegistryClient,
    dst: RegistryClient,
    source: ImageReference,
    destination: ImageReference,
    tag: str,
    dst_tags: set[str],
    src_ctx: SystemContext,
    dst_ctx: SystemContext,
    progress_for: Callable[[str], ProgressSink] | None,
) -> MirroredTag:
    digest = _head(src, source.repository, tag)
    if digest is None:
        digest = src.get_manifest(source.repository, tag).digest
    if tag in dst_tags and _head(dst, destination.repository, tag) == digest:
        return MirroredTag(tag, str(digest), "unchanged")
    copied = copy_image(
        ImageName(Transport.DOCKER, reference=source.with_tag(tag)),
        ImageName(Transport.DOCKER, reference=destination.with_tag(tag)),
        src_ctx=src_ctx,
        dst_ctx=dst_ctx,
        options=CopyOptions(all_images=True, preserve_digests=True),
        progress=progress_for(tag) if progress_for else None,
    )
    return MirroredTag(
        tag,
        str(copied.digest),
        "copied",
        blobs_copied=copied.blobs_copied,
        bytes_copied=copied.bytes_copied,
    )


def _mirror_signature(
    src: RegistryClient,
    dst: RegistryClient,
    source: ImageReference,
    destination: ImageReference,
    entry: MirroredTag,
    src_tags: set[str],
    dst_tags: set[str],
    src_ctx: SystemContext,
    dst_ctx: SystemContext,
) -> MirroredTag:
    digest = Digest.parse(entry.digest)
    sig = f"{digest.algorithm}-{digest.hex}.sig"
    if sig not in src_tags:
        return _with(entry, "none")
    want = _head(src, source.repository, sig)
    if sig in dst_tags and _head(dst, destination.repository, sig) == want:
        return _with(entry, "unchanged")
    copy_image(
        ImageName(Transport.DOCKER, reference=source.with_tag(sig)),
        ImageName(Transport.DOCKER, reference=destination.with_tag(sig)),
        src_ctx=src_ctx,
        dst_ctx=dst_ctx,
        options=CopyOptions(preserve_digests=True),
    )
    return _with(entry, "copied")


def _with(entry: MirroredTag, signatures: str) -> MirroredTag:
    return dataclasses.replace(entry, signatures=signatures)
