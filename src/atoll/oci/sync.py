"""``atoll image sync``: copy many images at once, as ``skopeo sync`` does.

Sources are a repository (every tag), one tagged image, or a YAML file::

    registry.example.com:          # a registry host
      images:
        busybox: []                # every tag
        redis: ["7.2", "sha256:…"] # these tags or digests
      images-by-tag-regex:
        nginx: '^1\\.25\\.'        # tags matching a regular expression
      credentials: {username: u, password: p}
      tls-verify: false
      cert-dir: /etc/certs

Each image goes to ``DEST/<last path component>:<tag>`` (``--scoped`` keeps the
whole source name, registry included, under DEST).  Destinations are
``docker://REGISTRY[/PREFIX]`` or ``dir:DIR``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.errors import AtollError, InvalidInputError, UnsupportedError
from atoll.oci.catalog import list_tags
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.imagecopy import CopyOptions, CopyResult, copy_image
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.progress import ProgressSink


@dataclass(frozen=True)
class SyncItem:
    source: ImageName
    destination: ImageName
    src_ctx: SystemContext


@dataclass
class SyncOutcome:
    item: SyncItem
    result: CopyResult | None = None
    error: AtollError | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.item.source),
            "destination": str(self.item.destination),
            "digest": str(self.result.digest) if self.result else None,
            "error": self.error.message if self.error else None,
            "exitCode": self.error.exit_code if self.error else 0,
        }


_REGISTRY_KEYS = {"images", "images-by-tag-regex", "credentials", "tls-verify", "cert-dir"}


def plan_from_repository(
    source_text: str, dest: str, ctx: SystemContext, *, scoped: bool = False
) -> list[SyncItem]:
    source = ImageName.parse(source_text)
    if source.transport is not Transport.DOCKER or source.reference is None:
        raise UnsupportedError(
            f"sync source {source} must be docker://REPOSITORY[:TAG] or a YAML file"
        )
    ref = source.reference
    if source_text_names_tag(source_text):
        refs = [ref]
    else:
        refs = [ref.with_tag(t) for t in sorted(list_tags(source, ctx))]
    return [
        SyncItem(ImageName(Transport.DOCKER, reference=r), _destination(r, dest, scoped), ctx)
        for r in refs
    ]


def source_text_names_tag(text: str) -> bool:
    """True when a docker:// name spells a tag or digest (``latest`` is implied otherwise)."""
    last = text.rsplit("/", 1)[-1]
    return ":" in last or "@" in last


def plan_from_yaml(
    path: Path, dest: str, ctx: SystemContext, *, scoped: bool = False
) -> list[SyncItem]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InvalidInputError(f"{path}:{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a mapping of registry names to settings")
    items: list[SyncItem] = []
    for registry, settings in data.items():
        items.extend(_registry_items(path, str(registry), settings, dest, ctx, scoped))
    return items


def _registry_items(
    path: Path,
    registry: str,
    settings: Any,
    dest: str,
    ctx: SystemContext,
    scoped: bool,
) -> Iterator[SyncItem]:
    where = f"{path}: {registry}"
    if not isinstance(settings, dict):
        raise InvalidInputError(f"{where}: expected a mapping with 'images'")
    unknown = set(settings) - _REGISTRY_KEYS
    if unknown:
        known = ", ".join(sorted(_REGISTRY_KEYS))
        raise InvalidInputError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {known})")
    reg_ctx = _registry_context(where, settings, ctx)
    for repo, tags in _mapping(where, settings, "images").items():
        base = ImageReference.parse(f"{registry}/{repo}")
        if tags is None or tags == []:
            names = sorted(list_tags(ImageName(Transport.DOCKER, reference=base), reg_ctx))
            refs = [base.with_tag(t) for t in names]
        elif isinstance(tags, list):
            refs = [_tag_or_digest(f"{where}: images.{repo}", base, str(t)) for t in tags]
        else:
            raise InvalidInputError(f"{where}: images.{repo}: expected a list of tags")
        for ref in refs:
            yield SyncItem(
                ImageName(Transport.DOCKER, reference=ref), _destination(ref, dest, scoped), reg_ctx
            )
    for repo, pattern in _mapping(where, settings, "images-by-tag-regex").items():
        try:
            regex = re.compile(str(pattern))
        except re.error as exc:
            raise InvalidInputError(
                f"{where}: images-by-tag-regex.{repo}: bad regular expression: {exc}"
            ) from None
        base = ImageReference.parse(f"{registry}/{repo}")
        all_tags = list_tags(ImageName(Transport.DOCKER, reference=base), reg_ctx)
        for tag in sorted(t for t in all_tags if regex.search(t)):
            ref = base.with_tag(tag)
            yield SyncItem(
                ImageName(Transport.DOCKER, reference=ref), _destination(ref, dest, scoped), reg_ctx
            )


def _mapping(where: str, settings: dict[str, Any], key: str) -> dict[str, Any]:
    value = settings.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where}: {key}: expected a mapping of repositories")
    return value


def _registry_context(where: str, settings: dict[str, Any], ctx: SystemContext) -> SystemContext:
    out = ctx
    creds = settings.get("credentials")
    if creds is not None:
        if not isinstance(creds, dict) or not {"username", "password"} <= set(creds):
            raise InvalidInputError(f"{where}: credentials: needs 'username' and 'password'")
        out = out._replace(credentials=f"{creds['username']}:{creds['password']}")
    if "tls-verify" in settings:
        verify = settings["tls-verify"]
        if not isinstance(verify, bool):
            raise InvalidInputError(f"{where}: tls-verify: expected true or false")
        out = out._replace(tls_verify=verify)
    if "cert-dir" in settings:
        out = out._replace(cert_dir=Path(str(settings["cert-dir"])))
    return out


def _tag_or_digest(where: str, base: ImageReference, text: str) -> ImageReference:
    try:
        if ":" in text and text.startswith("sha"):
            return base._replace(tag=None, digest=Digest.parse(text))
        return base.with_tag(text)
    except AtollError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


def _destination(ref: ImageReference, dest: str, scoped: bool) -> ImageName:
    suffix = ref.name if scoped else ref.repository.rsplit("/", 1)[-1]
    tag = ref.tag or (ref.digest.hex[:16] if ref.digest else "latest")
    if dest.startswith("dir:") and len(dest) > 4:
        return ImageName(Transport.DIR, path=Path(dest[4:]) / f"{suffix}:{tag}")
    if not dest.startswith("docker://"):
        raise UnsupportedError(
            f"sync destination {dest!r} must be docker://REGISTRY[/PREFIX] or dir:DIR"
        )
    base = dest.removeprefix("docker://").rstrip("/")
    return ImageName.parse(f"docker://{base}/{suffix}:{tag}")


def run_sync(
    items: list[SyncItem],
    dst_ctx: SystemContext,
    options: CopyOptions,
    *,
    keep_going: bool = False,
    progress_for: Callable[[SyncItem], ProgressSink] | None = None,
) -> list[SyncOutcome]:
    outcomes: list[SyncOutcome] = []
    for item in items:
        try:
            result = copy_image(
                item.source,
                item.destination,
                src_ctx=item.src_ctx,
                dst_ctx=dst_ctx,
                options=options,
                progress=progress_for(item) if progress_for else None,
            )
            outcomes.append(SyncOutcome(item, result=result))
        except AtollError as exc:
            outcomes.append(SyncOutcome(item, error=exc))
            if not keep_going:
                break
    return outcomes
