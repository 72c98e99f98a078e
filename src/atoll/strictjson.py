"""Strict JSON for documents that trust depends on: policies, signatures, manifests,
credentials, bundle indexes.

Python's :func:`json.loads` keeps the last of two equal keys, skips a UTF-8
byte-order mark and recurses once per nesting level until the interpreter's
recursion limit.  Go's ``encoding/json``, which podman and skopeo use, refuses
a byte-order mark and stops at a fixed depth ("exceeded max depth"); skopeo
refuses a policy with a duplicated key.  Two readers that disagree about what
a document says are how a policy that looks strict admits everything, so every
such document is read here, with those three cases refused:

* a key that appears twice in one object;
* a byte-order mark (or any text that is not UTF-8);
* objects and arrays nested deeper than :data:`MAX_DEPTH`.

Callers turn :class:`StrictJSONError` into the error class of their input
(``PolicyError``, ``ManifestError``, ...), naming the file.
"""

from __future__ import annotations

import json
from typing import Any

#: No document atoll reads nests deeper than a handful of levels; this bound keeps
#: every walk over a document (validation, ``json.dumps``, ``repr``) far from the
#: recursion limit.
MAX_DEPTH = 100


class StrictJSONError(ValueError):
    """The text is not one unambiguous JSON document; the message says why."""


def loads(data: bytes | str) -> Any:
    """Parse *data* as JSON, refusing duplicate keys, a byte-order mark and deep nesting."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise StrictJSONError("starts with a byte-order mark (JSON text has none)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"not valid JSON ({exc})") from None
    except RecursionError:
        # The parser nests once per level and stops cleanly at the interpreter's limit.
        raise StrictJSONError(depth_message("objects and arrays")) from None
    if too_deep(doc):
        raise StrictJSONError(depth_message("objects and arrays"))
    return doc


def too_deep(doc: object) -> bool:
    """Whether *doc*'s dicts and lists nest deeper than :data:`MAX_DEPTH`.

    Level by level, without recursion: *doc* may nest deeper than the interpreter
    recurses."""
    level: list[Any] = [doc]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return True
        below: list[Any] = []
        for value in level:
            kind = type(value)
            if kind is dict or kind is list:
                below.extend(
                    c
                    for c in (value.values() if kind is dict else value)
                    if type(c) is dict or type(c) is list
                )
        level = below
    return False


def depth_message(what: str) -> str:
    return f"exceeded max depth: {what} nest more than {MAX_DEPTH} levels"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate key {json.dumps(key)} in one object")
            seen.add(key)
    return doc
