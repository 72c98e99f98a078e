"""The local image store as auto-update and bound images use it: podman's commands.

Every call is one ``podman`` process through :func:`atoll.run.run`; the
environment (``CONTAINERS_*``) is the caller's or the given one, so tests and
benchmarks point podman at a store of their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atoll.errors import AtollError, CommandError
from atoll.podman import find_podman, podman_environment
from atoll.run import run

log = logging.getLogger(__name__)

#: The longest one podman command may take (a pull of a large image).
PODMAN_TIMEOUT = 1800.0


@dataclass(frozen=True)
class LocalImage:
    id: str
    repo_tags: tuple[str, ...]
    #: ``REPO@sha256:…`` names podman recorded when the image was pulled.
    repo_digests: tuple[str, ...]

    def digests_for(self, repository: str) -> set[str]:
        """The digests podman recorded for *repository* (``registry/path``)."""
        found = set()
        for entry in self.repo_digests:
            name, _, digest = entry.partition("@")
            if name == repository and digest:
                found.add(digest)
        return found


def same_image(a: str | None, b: str | None) -> bool:
    """Whether two image IDs name the same image (either may be shortened or prefixed)."""
    if not a or not b:
        return False
    a, b = a.removeprefix("sha256:"), b.removeprefix("sha256:")
    return a.startswith(b) or b.startswith(a)


class Podman:
    """podman's image commands; *env* replaces the inherited environment."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = podman_environment({}, env) if env is not None else podman_environment()
        self._binary: str | None = None

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_podman(self.env)
        return self._binary

    def _run(self, *args: str, timeout: float = PODMAN_TIMEOUT) -> str:
        proc = run([self.binary, *args], env=self.env, timeout=timeout)
        return proc.stdout.decode(errors="replace")

    def inspect(self, refs: Sequence[str]) -> dict[str, LocalImage | None]:
        """Each of *refs* (names or IDs) as podman knows it, None when it has no such image."""
        found: dict[str, LocalImage | None] = {}
        wanted = list(dict.fromkeys(refs))
        if not wanted:
            return found
        try:
            # One process for all, the common case; on a missing one ask one by one.
            found.update(zip(wanted, self._inspect(wanted), strict=True))
            return found
        except CommandError:
            pass
        for ref in wanted:
            try:
                found[ref] = self._inspect([ref])[0]
            except CommandError as exc:
                if "image not known" not in (exc.stderr_tail + exc.message):
                    raise
                found[ref] = None
        return found

    def _inspect(self, refs: Sequence[str]) -> list[LocalImage]:
        data = json.loads(self._run("image", "inspect", "--format", "json", *refs) or "[]")
        if not isinstance(data, list) or len(data) != len(refs):
            raise AtollError(f"podman image inspect answered {len(data)} images for {len(refs)}")
        return [_image(item) for item in data]

    def pull(self, refs: Iterable[str], *, arch: str | None = None) -> list[str]:
        """Pull every ref in one podman process; return their image IDs, in order."""
        wanted = list(refs)
        if not wanted:
            return []
        extra = ["--arch", arch] if arch else []
        out = self._run("pull", "--quiet", *extra, *wanted)
        ids = [line.strip() for line in out.splitlines() if line.strip()]
        if len(ids) != len(wanted):
            # podman prints one ID per image; anything else: ask it.
            infos = self.inspect(wanted)
            return [info.id if info else "" for info in infos.values()]
        return ids

    def tag(self, image: str, name: str) -> None:
        self._run("tag", image, name)

    def exists(self, ref: str) -> bool:
        proc = run([self.binary, "image", "exists", ref], env=self.env, check=False)
        return proc.returncode == 0

    def remove(self, image: str) -> bool:
        """Remove an image no container uses (never forced); False if podman refused."""
        proc = run([self.binary, "rmi", image], env=self.env, check=False)
        if proc.returncode != 0:
            log.info("not removing image %s: %s", image, proc.stderr.decode(errors="replace"))
            return False
        return True

    def images_in_use(self) -> set[str]:
        """IDs of the images of every container, running or not."""
        out = self._run("ps", "--all", "--no-trunc", "--format", "{{.ImageID}}")
        return {line.strip() for line in out.splitlines() if line.strip()}


def _image(item: Any) -> LocalImage:
    return LocalImage(
        id=str(item.get("Id", "")),
        repo_tags=tuple(str(t) for t in item.get("RepoTags") or ()),
        repo_digests=tuple(str(d) for d in item.get("RepoDigests") or ()),
    )
