"""Version tags, as auto-update follows them (the versions are :class:`atoll.semver.Version`).

A tag is a *version* when it is one to three dot-separated numbers, optionally
after a ``v``: ``3``, ``3.4``, ``3.4.2``, ``v3.4.2``.  Anything else (``latest``,
``3.4.2-rc1``, ``3.4-alpine``, ``2024.01.02-1``) is an ordinary tag.

A unit's ``Image=repo:3.4`` *follows* the versions under it::

    Image tag   follows          taken                    reported, not taken
    3.4         3.4.z            3.4.7 (highest z)        3.5.0, 4.0.1 (newer minor or major)
    3           3.y.z            3.9.1 (highest y.z)      4.0.0 (newer major)
    3.4.2       only itself      (the tag's digest)       3.4.3, 3.5.0, 4.0.0

The prefix must match: ``v3.4`` follows ``v3.4.z`` and not ``3.4.z``.  The tag
itself (``3.4``) counts as the lowest version of its line, so a repository that
only moves the floating tag is followed as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from atoll.semver import Version


@dataclass(frozen=True)
class VersionChoice:
    """What a pinned tag resolves to among a repository's tags."""

    #: The tag to check and pull (the pin itself when nothing newer is on its line).
    tag: str
    #: Newer versions outside the pin's line, highest first: reported, never taken.
    newer: tuple[str, ...]


def is_pin(tag: str) -> bool:
    """Whether a unit's tag is a version that auto-update follows (one or two numbers)."""
    version = Version.parse(tag)
    return version is not None and version.parts < 3


def choose(pin: str, tags: Iterable[str]) -> VersionChoice:
    """The highest tag on *pin*'s line, and the newer versions off it.

    *pin* need not be among *tags*; when nothing on its line is, the pin itself
    is returned (and checking it will say whether it exists)."""
    wanted = Version.parse(pin)
    if wanted is None:
        return VersionChoice(pin, ())
    versions = [v for v in map(Version.parse, set(tags)) if v is not None]
    line = [v for v in versions if wanted.follows(v)]
    best = max(line, default=wanted)
    # Newer versions off the line, one tag per version (4, 4.0 and 4.0.0 are the same).
    ceiling = wanted.key if wanted.parts == 3 else _line_end(wanted)
    newer: dict[tuple[int, int, int], Version] = {}
    for v in versions:
        if (v.prefix == wanted.prefix and v.key > ceiling) and (
            v.key not in newer or v.parts > newer[v.key].parts
        ):
            newer[v.key] = v
    ranked = sorted(newer.values(), reverse=True)
    return VersionChoice(best.tag, tuple(v.tag for v in ranked))


def _line_end(pin: Version) -> tuple[int, int, int]:
    """The highest version *pin* can follow (``3.4`` → (3, 4, ∞))."""
    big = 1 << 62
    if pin.parts == 1:
        return (pin.key[0], big, big)
    return (pin.key[0], pin.key[1], big)
