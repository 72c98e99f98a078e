"""Label selectors: ``key=value``, ``key!=value``, ``key`` (exists) and ``!key``
(absent), joined by commas; a device matches when every term holds.  An empty
selector matches every device."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEY = r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?"
_TERM = re.compile(rf"^(?P<neg>!)?(?P<key>{_KEY})((?P<op>!=|==|=)(?P<value>{_VALUE}))?$")


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # "=", "!=", "exists", "absent"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "absent":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(term.matches(labels) for term in self.terms)


def parse_selector(text: str) -> Selector:
    """A :class:`Selector`; ``ValueError`` naming the term that does not parse."""
    terms = []
    for raw in text.split(","):
        word = raw.strip()
        if not word and text.strip() == "":
            continue
        found = _TERM.match(word)
        if found is None or (found["neg"] and found["op"]):
            raise ValueError(
                f"selector term {word!r} does not parse: write key=value, key!=value, key or !key"
            )
        if found["neg"]:
            terms.append(Term(found["key"], "absent"))
        elif found["op"] is None:
            terms.append(Term(found["key"], "exists"))
        else:
            op = "!=" if found["op"] == "!=" else "="
            terms.append(Term(found["key"], op, found["value"]))
    return Selector(tuple(terms))
