"""Where the reads of one registry image go: the single resolver every reader uses.

registries.conf (:mod:`atoll.oci.registries_conf`) turns the name as written
into an ordered list of endpoints::

    REGISTRY/REPOSITORY  ->  mirror 1, mirror 2, ...   (those that serve a tag or
                                                        a digest reference, as asked)
                             primary                    (the entry's ``location``,
                                                        the prefix replaced)

:class:`PullEndpoint` opens a client on the first and runs a read there; a
read that fails moves it to the next (logged at info level).  The first
endpoint that answers serves every later read through the same object, so a
manifest, its blobs, its tags and its signatures come from one place.  When
every endpoint fails, the primary's error is raised.

Reads only: pushes, deletions and tag moves go to the name as written, as
containers/image does (``location`` and mirrors are pull settings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from atoll.closing import Closeable
from atoll.errors import AtollError
from atoll.logs import Logger
from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.reference import ImageReference
from atoll.oci.registries_conf import PullSource, load_registries_conf

log = Logger(__name__)

T = TypeVar("T")


def pull_sources(reference: ImageReference, ctx: SystemContext) -> list[PullSource]:
    """The endpoints a read of *reference* tries, in order (the primary last)."""
    return load_registries_conf(ctx).pull_sources(
        reference.registry, reference.repository, by_digest=reference.digest is not None
    )


def is_direct(reference: ImageReference, ctx: SystemContext) -> bool:
    """True when reads of *reference* go to the name as written, and only there."""
    return pull_sources(reference, ctx) == [PullSource(reference.registry, reference.repository)]


class PullEndpoint(Closeable):
    """A client for the reads of one image, on the endpoint that answers first."""

    def __init__(self, reference: ImageReference, ctx: SystemContext) -> None:
        self.reference = reference
        self._ctx = ctx
        self._left = pull_sources(reference, ctx)
        first = self._left.pop(0)
        self.client = RegistryClient(first.registry, ctx, insecure=first.insecure)
        self.repository = first.repository

    @property
    def registry(self) -> str:
        return self.client.registry

    def read(self, operation: Callable[[RegistryClient, str], T]) -> T:
        """``operation(client, repository)`` on the endpoints in order until one
        answers; after that, every read stays on the endpoint that answered."""
        while True:
            try:
                result = operation(self.client, self.repository)
            except AtollError as exc:
                if not self._left:
                    raise
                self._advance(exc)
                continue
            self._left = []
            return result

    def _advance(self, exc: AtollError) -> None:
        following = self._left.pop(0)
        log.info("%s/%s: %s; trying %s", self.client.registry, self.repository, exc, following)
        self.client.close()
        self.client = RegistryClient(following.registry, self._ctx, insecure=following.insecure)
        self.repository = following.repository

    def close(self) -> None:
        self.client.close()


def read_image(
    reference: ImageReference, ctx: SystemContext, operation: Callable[[RegistryClient, str], T]
) -> T:
    """One read of *reference* through its endpoints (see :class:`PullEndpoint`)."""
    with PullEndpoint(reference, ctx) as endpoint:
        return endpoint.read(operation)
