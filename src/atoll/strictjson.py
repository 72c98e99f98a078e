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
import re
from typing import Any

#: No document atoll reads nests deeper than a handful of levels; this bound keeps
#: the parser (and every walk over the result) far from the recursion limit.
MAX_DEPTH = 100

# Strings are removed before brackets are counted: a "[" inside a string is text.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class StrictJSONError(ValueError):
    """The text is not one unambiguous JSON document; the message says why."""


def loads(data: bytes | str) -> Any:
    """Parse *data* as JSON, refusing duplicate keys, a byte-order mark and deep nesting."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.startswith(b"\xef\xbb\xbf") or raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StrictJSONError("starts with a byte-order mark (JSON text has none)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    _check_depth(raw)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"not valid JSON ({exc})") from None
    except RecursionError:  # only if MAX_DEPTH were raised past the interpreter's limit
        raise StrictJSONError(_depth_message()) from None


def _check_depth(raw: bytes) -> None:
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise StrictJSONError(_depth_message())
        else:
            depth -= 1


def _depth_message() -> str:
    return f"exceeded max depth: objects and arrays nest more than {MAX_DEPTH} levels"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise StrictJSONError(f"duplicate key {json.dumps(key)} in one object")
        doc[key] = value
    return doc
