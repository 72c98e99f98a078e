"""Asking registries what the workloads' tags point to, all at once.

For every distinct image reference: one ``HEAD /v2/NAME/manifests/TAG`` (with
the Accept types of both indexes and manifests, so a multi-platform image
answers with its index's digest, which is what podman records when it pulls by
tag).  A version pin (``Image=repo:3.4``, see :mod:`atoll.workloads.autoupdate.versionpins`)
first lists the repository's tags and then checks the highest tag on its line.

Each registry gets one client (one ``/v2/`` ping, pooled connections); every
request runs in a thread pool of *concurrency* workers, so N images on one
registry take about ``ceil(N / concurrency)`` round trips after the ping.

With *bases* (registry -> the ``/v2/`` URL an earlier run's ping chose, kept by
the caller between runs), a registry it names is not pinged: its requests go
straight to that URL and learn authentication from their 401s, which saves the
ping's round trip and, for an insecure registry, the HTTPS attempt before it.
A check that fails there is tried once more after a ping.  *bases* is updated
with what this run used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atoll.errors import AtollError
from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.semver import Version
from atoll.workloads.autoupdate import versionpins

if TYPE_CHECKING:
    from atoll.oci.client import RegistryClient

log = logging.getLogger(__name__)

#: Requests in flight at once by default.
DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class RemoteCheck:
    """What the registry says about one image reference."""

    reference: ImageReference
    #: The tag that was checked (for a version pin, the highest on its line).
    tag: str
    digest: str | None
    #: Newer versions off a pin's line: reported, not taken.
    newer: tuple[str, ...] = ()
    error: str | None = None

    @property
    def checked(self) -> ImageReference:
        return self.reference.with_tag(self.tag)


def check_references(
    references: Sequence[ImageReference],
    ctx: SystemContext,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    follow_versions: bool = True,
    bases: dict[str, str] | None = None,
) -> dict[ImageReference, RemoteCheck]:
    """The registry's answer for every reference (errors are answers, not raised).

    Each reference is asked where registries.conf sends its reads (mirrors in
    order, then the primary at its ``location``: :mod:`atoll.oci.pullsource`),
    as podman's pull would go; the first endpoint that answers is the answer."""
    from atoll.oci.client import RegistryClient
    from atoll.oci.pullsource import pull_sources

    wanted = list(dict.fromkeys(references))
    if not wanted:
        return {}
    workers = max(1, min(concurrency, len(wanted)))
    # Enough pooled connections for every worker (the client keeps 2 per "parallel").
    ctx = ctx._replace(parallel=max(ctx.parallel, (workers + 1) // 2))
    sources = {ref: pull_sources(ref, ctx) for ref in wanted}
    clients: dict[str, RegistryClient] = {}
    assumed: dict[str, str] = {}
    for source in (s for ref in wanted for s in sources[ref]):
        if source.registry not in clients:
            client = RegistryClient(source.registry, ctx, insecure=source.insecure)
            clients[source.registry] = client
            known = (bases or {}).get(source.registry)
            if known and client.assume_base(known):
                assumed[source.registry] = known

    def check_at(ref: ImageReference, registry: str, repository: str) -> RemoteCheck:
        client = clients[registry]
        result = _check_one(client, ref, repository, follow_versions)
        known = assumed.get(registry)
        if result.error is not None and known is not None:
            log.debug("%s: %s failed at %s; pinging again", registry, ref, known)
            client.forget_base(known)
            result = _check_one(client, ref, repository, follow_versions)
        return result

    def check(ref: ImageReference) -> RemoteCheck:
        *mirrors, primary = sources[ref]
        for source in mirrors:
            result = check_at(ref, source.registry, source.repository)
            if result.error is None:
                return result
            log.info("checking %s at %s failed: %s", ref, source, result.error)
        return check_at(ref, primary.registry, primary.repository)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="atoll-check") as pool:
            results = dict(zip(wanted, pool.map(check, wanted), strict=True))
    finally:
        for client in clients.values():
            client.close()
    if bases is not None:
        for registry, client in clients.items():
            base = client.base
            if base is not None:
                bases[registry] = base
            else:
                bases.pop(registry, None)
    return results


def _check_one(
    client: RegistryClient, ref: ImageReference, repository: str, follow_versions: bool
) -> RemoteCheck:
    tag = ref.tag or "latest"
    newer: tuple[str, ...] = ()
    try:
        if ref.digest is not None:
            # Pinned by digest: nothing to follow.
            return RemoteCheck(ref, tag, str(ref.digest))
        version = Version.parse(tag)
        if follow_versions and version is not None:
            choice = versionpins.choose(tag, client.list_tags(repository))
            tag, newer = (choice.tag if version.parts < 3 else tag), choice.newer
        head = client.head_manifest(repository, tag)
        if head.digest is None:
            # A registry that sends no Docker-Content-Digest: hash the manifest itself.
            head_digest = str(client.get_manifest(repository, tag).digest)
        else:
            head_digest = str(head.digest)
        return RemoteCheck(ref, tag, head_digest, newer)
    except AtollError as exc:
        log.debug("checking %s failed: %s", ref, exc)
        return RemoteCheck(ref, tag, None, newer, error=exc.message)
