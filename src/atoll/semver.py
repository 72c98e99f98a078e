"""Semantic versions: the one version type of image labels and tags.

``Version.parse`` reads one to three dot-separated numbers without leading
zeros, optionally after a ``v`` (``3``, ``3.4``, ``v3.4.2``); missing numbers
count as 0 (``1.2`` is ``1.2.0``).  With ``full=True`` it also reads
semver.org's pre-release and build metadata (``1.0.0-rc.1+build.5``), as the
version labels of images do; tags that follow a version line do not have them.

Versions are ordered as semver.org §11 says (a release after its
pre-releases, build metadata ignored); among equal versions a tag that writes
more numbers sorts higher (``2.1.0`` over ``2.1``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_VERSION = re.compile(
    r"^(?P<prefix>v?)(?P<major>0|[1-9][0-9]*)(?:\.(?P<minor>0|[1-9][0-9]*))?"
    r"(?:\.(?P<patch>0|[1-9][0-9]*))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?P<build>\+[0-9A-Za-z.-]+)?$"
)

#: Numbers, release (1) or pre-release (0), the pre-release identifiers.
_Precedence = tuple[tuple[int, int, int], int, tuple[tuple[int, int, str], ...]]


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    """A version; see the module's docstring for what it reads and how it orders."""

    #: (major, minor, patch).
    key: tuple[int, int, int]
    #: How many numbers the text has (1-3): a pin's precision.
    parts: int
    #: ``v`` or "".
    prefix: str
    #: The text it was read from.
    tag: str
    #: Pre-release identifiers (``1.0.0-rc.1``: ``("rc", "1")``); empty for a release.
    pre: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, *, full: bool = False) -> Version | None:
        """The version *text* is, or None; *full*: pre-release and build allowed."""
        match = _VERSION.match(text)
        if match is None or (not full and (match["pre"] or match["build"])):
            return None
        given = [int(n) for n in match.group("major", "minor", "patch") if n is not None]
        padded = [*given, 0, 0, 0][:3]
        pre = tuple(match["pre"].split(".")) if match["pre"] else ()
        return cls((padded[0], padded[1], padded[2]), len(given), match["prefix"], text, pre)

    def precedence(self) -> _Precedence:
        """semver.org §11: numbers, then a release after its pre-releases, whose
        numeric identifiers sort numerically and before alphanumeric ones."""
        if not self.pre:
            return (self.key, 1, ())
        idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.key, 0, idents)

    def follows(self, other: Version) -> bool:
        """Whether *other* is on the line this pin follows (``3.4`` → ``3.4.z``)."""
        if other.prefix != self.prefix or other.parts < self.parts:
            return False
        if self.parts == 3:
            return other.tag == self.tag
        return other.key[: self.parts] == self.key[: self.parts]

    def compare(self, other: Version) -> int:
        """-1, 0 or 1 as this version's precedence is below, equal to or above *other*'s."""
        mine, theirs = self.precedence(), other.precedence()
        return (mine > theirs) - (mine < theirs)

    def _order(self) -> tuple[_Precedence, int, str, str]:
        return (self.precedence(), self.parts, self.prefix, self.tag)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._order() < other._order()

    def __str__(self) -> str:
        return self.tag
