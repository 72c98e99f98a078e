"""``atoll promote``: copy an image by digest into another repository, then move its tags.

Order of work (nothing in the destination changes until every check passed):

1. the source is named by digest (``REPO@sha256:…``); the trust policy, when
   given, must admit that digest (signatures are those of the source repository);
2. for each tag, the destination's current image under it is read: a tag whose
   image has a *newer* ``org.opencontainers.image.version`` (semantic version
   order) refuses the whole promotion with DowngradeRefusedError, unless
   ``allow_downgrade``;
3. the image is copied by digest (the destination checks the manifest digest),
   its manifest is read back from the destination and its digest checked again;
4. the source's signature attachment (``sha256-HEX.sig``) is copied along when
   the destination has none for that digest;
5. the tags are moved (each a manifest PUT of the same bytes);
6. the promotion is recorded.

The record (format version :data:`RECORD_VERSION`) is an OCI artifact in the
destination repository, kept beside the image the way sigstore keeps signatures::

    REPO:sha256-HEX.promotion   (application/vnd.oci.image.manifest.v1+json)
    ├── artifactType  application/vnd.atoll.promotion.v1
    ├── subject       the promoted manifest (an OCI 1.1 registry lists it as a referrer)
    ├── config        application/vnd.oci.empty.v1+json  ({})
    └── layers        one per promotion of this digest into REPO, oldest first
        ├── mediaType    application/vnd.atoll.promotion.v1+json
        ├── digest/size  of the record blob below
        └── annotations  org.opencontainers.image.created: AT, dev.atoll.promotion.by: WHO,
                         dev.atoll.promotion.tags: "1.2.3,1.2,1,stable"

    record blob: {"version": 1, "digest": "sha256:…", "source": "stage/os@sha256:…",
                  "repository": "prod/os", "tags": [...], "imageVersion": "1.2.3",
                  "previous": {"stable": "sha256:…" | null, ...}, "by": WHO, "at": AT}

:func:`read_promotions` reads it back (``atoll promote --history``).
"""

from __future__ import annotations

import datetime
import getpass
import json
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atoll import strictjson
from atoll.errors import (
    DowngradeRefusedError,
    InvalidInputError,
    NotFoundError,
    PromotionError,
)
from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.imageinspect import read_config, select_manifest
from atoll.oci.manifest import MediaType, parse_config
from atoll.oci.pullsource import read_image
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport, open_source
from atoll.pipeline.policy import Policy
from atoll.pipeline.trust import TrustDecision, check_image
from atoll.progress import ProgressSink
from atoll.semver import Version
from atoll.timeutil import utc_timestamp

RECORD_VERSION = 1
RECORD_MEDIA_TYPE = "application/vnd.atoll.promotion.v1+json"
RECORD_ARTIFACT_TYPE = "application/vnd.atoll.promotion.v1"
RECORD_SUFFIX = ".promotion"
ANNOTATION_BY = "dev.atoll.promotion.by"
ANNOTATION_TAGS = "dev.atoll.promotion.tags"
ANNOTATION_CREATED = "org.opencontainers.image.created"
_EMPTY = b"{}"
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


# --- versions ---------------------------------------------------------------------------


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as semantic versions *a* and *b* compare; None if either is not one."""
    va, vb = Version.parse(a.strip(), full=True), Version.parse(b.strip(), full=True)
    if va is None or vb is None:
        return None
    return va.compare(vb)


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TagMove:
    tag: str
    #: ``created`` (the tag was new), ``moved``, ``unchanged`` (already there).
    action: str
    previous_digest: str | None = None
    previous_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "action": self.action,
            "previousDigest": self.previous_digest,
            "previousVersion": self.previous_version,
        }


@dataclass
class PromotionResult:
    source: str
    repository: str
    digest: str
    version: str | None
    tags: list[TagMove]
    by: str
    at: str
    record: str
    #: ``copied``, ``present`` (the destination has signatures already), ``none``.
    signatures: str
    trust: TrustDecision | None = None
    blobs_copied: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "repository": self.repository,
            "digest": self.digest,
            "version": self.version,
            "tags": [t.to_json() for t in self.tags],
            "by": self.by,
            "at": self.at,
            "record": self.record,
            "signatures": self.signatures,
            "trust": self.trust.to_json() if self.trust else None,
            "blobsCopied": self.blobs_copied,
        }


# --- promoting --------------------------------------------------------------------------


def default_promoter() -> str:
    """``USER@HOST``: who promotes, when ``--by`` does not say."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def parse_tags(text: str) -> list[str]:
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if not tags:
        raise InvalidInputError("--tags: no tag given", hint="e.g. --tags 1.2.3,1.2,1,stable")
    for tag in tags:
        if not _TAG_RE.match(tag) or (tag.startswith("sha256-")):
            raise InvalidInputError(f"--tags: {tag!r} is not a valid tag")
    return list(dict.fromkeys(tags))


def promote(
    source: ImageReference,
    repository: ImageReference,
    tags: Sequence[str],
    *,
    src_ctx: SystemContext,
    dst_ctx: SystemContext | None = None,
    policy: Policy | None = None,
    allow_downgrade: bool = False,
    by: str | None = None,
    progress: ProgressSink | None = None,
    now: datetime.datetime | None = None,
) -> PromotionResult:
    """Promote *source* (named by digest) into *repository* under *tags*; see the module."""
    dst_ctx = dst_ctx or src_ctx
    if source.digest is None:
        raise InvalidInputError(
            f"{source}: name the image to promote by digest (REPO@sha256:…)",
            hint="a tag can move under you; atoll image inspect shows the digest",
        )
    if repository.tag is not None or repository.digest is not None:
        raise InvalidInputError(
            f"--to {repository}: name a repository, without tag or digest",
            hint="the tags go in --tags",
        )
    digest = source.digest
    trust = check_image(source, digest, policy, ctx=src_ctx) if policy is not None else None
    version = _version_of(ImageName(Transport.DOCKER, reference=source), src_ctx)
    if not allow_downgrade and (
        version is None or Version.parse(version.strip(), full=True) is None
    ):
        raise PromotionError(
            f"{source}: no semantic version in the org.opencontainers.image.version label "
            f"({version!r}): promotion cannot tell newer from older",
            hint="label the image (LABEL org.opencontainers.image.version=1.2.3) "
            "or pass --allow-downgrade to skip the check",
        )
    moves = _plan_tags(repository, tags, digest, version, dst_ctx, allow_downgrade)
    target = repository.with_digest(digest)
    copied = copy_image(
        ImageName(Transport.DOCKER, reference=source),
        ImageName(Transport.DOCKER, reference=target),
        src_ctx=src_ctx,
        dst_ctx=dst_ctx,
        options=CopyOptions(all_images=True, preserve_digests=True),
        progress=progress,
    )
    if copied.digest != digest:
        raise PromotionError(f"{target}: the copy has digest {copied.digest}, not {digest}")
    signatures = _copy_signatures(source, repository, digest, src_ctx, dst_ctx)
    at = utc_timestamp(now)
    who = by or default_promoter()
    with RegistryClient(repository.registry, dst_ctx) as client:
        fetched = client.get_manifest(repository.repository, str(digest))
        if fetched.digest != digest:
            raise PromotionError(
                f"{target}: the registry serves a manifest with digest {fetched.digest}"
            )
        media_type = fetched.media_type or json.loads(fetched.raw).get("mediaType")
        for move in moves:
            if move.action != "unchanged":
                client.put_manifest(repository.repository, move.tag, fetched.raw, media_type)
        record_tag = _record(
            client,
            repository,
            digest,
            len(fetched.raw),
            str(media_type),
            {
                "version": RECORD_VERSION,
                "digest": str(digest),
                "source": str(source),
                "repository": repository.name,
                "tags": list(tags),
                "imageVersion": version,
                "previous": {m.tag: m.previous_digest for m in moves},
                "by": who,
                "at": at,
            },
        )
    return PromotionResult(
        source=str(source),
        repository=repository.name,
        digest=str(digest),
        version=version,
        tags=moves,
        by=who,
        at=at,
        record=f"{repository.name}:{record_tag}",
        signatures=signatures,
        trust=trust,
        blobs_copied=copied.blobs_copied + copied.blobs_mounted,
    )


def read_promotions(repository: ImageReference, digest: Digest, ctx: SystemContext) -> list[Any]:
    """The promotion records of *digest* in *repository*, oldest first."""
    with RegistryClient(repository.registry, ctx) as client:
        manifest = _read_record_manifest(client, repository, digest)
        if manifest is None:
            return []
        records = []
        for layer in manifest["layers"]:
            blob = client.fetch_blob(
                repository.repository, Digest.parse(layer["digest"]), layer.get("size")
            )
            try:
                records.append(strictjson.loads(blob))
            except strictjson.StrictJSONError as exc:
                raise PromotionError(
                    f"{repository.name}:{record_tag(digest)}: a promotion record: {exc}"
                ) from None
        return records


def record_tag(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}{RECORD_SUFFIX}"


def _version_of(name: ImageName, ctx: SystemContext) -> str | None:
    with open_source(name, ctx) as source:
        _, manifest = select_manifest(source, ctx.platform)
        config = parse_config(read_config(source, manifest), where=source.description)
    return config.version


def _plan_tags(
    repository: ImageReference,
    tags: Sequence[str],
    digest: Digest,
    version: str | None,
    ctx: SystemContext,
    allow_downgrade: bool,
) -> list[TagMove]:
    moves = []
    with RegistryClient(repository.registry, ctx) as client:
        for tag in tags:
            try:
                head = client.head_manifest(repository.repository, tag)
            except NotFoundError:
                moves.append(TagMove(tag, "created"))
                continue
            if head.digest == digest:
                moves.append(TagMove(tag, "unchanged", str(digest), version))
                continue
            current = _version_of(
                ImageName(Transport.DOCKER, reference=repository.with_tag(tag)), ctx
            )
            order = compare_versions(version or "", current or "")
            if order is not None and order < 0 and not allow_downgrade:
                raise DowngradeRefusedError(
                    f"{repository.name}:{tag} is at version {current}; moving it to {version} "
                    "would be a downgrade",
                    hint="promote a newer image, drop the tag from --tags, "
                    "or pass --allow-downgrade to roll the tag back on purpose",
                )
            moves.append(TagMove(tag, "moved", str(head.digest) if head.digest else None, current))
    return moves


def _copy_signatures(
    source: ImageReference,
    repository: ImageReference,
    digest: Digest,
    src_ctx: SystemContext,
    dst_ctx: SystemContext,
) -> str:
    tag = f"{digest.algorithm}-{digest.hex}.sig"
    with RegistryClient(repository.registry, dst_ctx) as client:
        try:
            client.head_manifest(repository.repository, tag)
            return "present"
        except NotFoundError:
            pass
    attachment = source._replace(tag=tag, digest=None)
    try:
        read_image(attachment, src_ctx, lambda client, repo: client.head_manifest(repo, tag))
    except NotFoundError:
        return "none"
    copy_image(
        ImageName(Transport.DOCKER, reference=attachment),
        ImageName(Transport.DOCKER, reference=repository.with_tag(tag)),
        src_ctx=src_ctx,
        dst_ctx=dst_ctx,
        options=CopyOptions(preserve_digests=True),
    )
    return "copied"


def _read_record_manifest(
    client: RegistryClient, repository: ImageReference, digest: Digest
) -> dict[str, Any] | None:
    try:
        fetched = client.get_manifest(repository.repository, record_tag(digest))
    except NotFoundError:
        return None
    manifest: dict[str, Any] = json.loads(fetched.raw)
    if not isinstance(manifest.get("layers"), list):
        raise PromotionError(
            f"{repository.name}:{record_tag(digest)}: the promotion record is not a manifest"
        )
    return manifest


def _record(
    client: RegistryClient,
    repository: ImageReference,
    digest: Digest,
    size: int,
    media_type: str,
    record: dict[str, Any],
) -> str:
    repo = repository.repository
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    blob_digest = Digest.of(blob)
    client.upload_blob(repo, blob_digest, [blob], size=len(blob))
    empty_digest = Digest.of(_EMPTY)
    client.upload_blob(repo, empty_digest, [_EMPTY], size=len(_EMPTY))
    manifest = _read_record_manifest(client, repository, digest) or {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST.value,
        "artifactType": RECORD_ARTIFACT_TYPE,
        "config": {
            "mediaType": MediaType.OCI_EMPTY.value,
            "digest": str(empty_digest),
            "size": len(_EMPTY),
        },
        "layers": [],
        "subject": {"mediaType": media_type, "digest": str(digest), "size": size},
    }
    manifest["layers"].append(
        {
            "mediaType": RECORD_MEDIA_TYPE,
            "digest": str(blob_digest),
            "size": len(blob),
            "annotations": {
                ANNOTATION_CREATED: record["at"],
                ANNOTATION_BY: record["by"],
                ANNOTATION_TAGS: ",".join(record["tags"]),
            },
        }
    )
    tag = record_tag(digest)
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    client.put_manifest(repo, tag, raw, MediaType.OCI_MANIFEST.value)
    return tag
