"""TOML with bounded nesting, for every configuration file a user or an image gives.

:mod:`tomllib` recurses once per level of nested arrays and inline tables, so
deep nesting ends in ``RecursionError``, and dotted keys (``[a.a.a…]``) build
tables nested as deep as the key is long, which every later walk over the
document (validation, ``json.dumps``, ``repr``) recurses into.  No atoll file
nests deeper than a few levels: past :data:`MAX_DEPTH` the text is refused with
:class:`NestingError`, a :class:`tomllib.TOMLDecodeError`, so callers report it
as they report any other malformed TOML.
"""

from __future__ import annotations

import tomllib
from typing import Any

from atoll.strictjson import MAX_DEPTH


class NestingError(tomllib.TOMLDecodeError):
    """Tables and arrays nest deeper than :data:`MAX_DEPTH`."""


def loads(text: str) -> dict[str, Any]:
    """Parse *text* as TOML, refusing nesting deeper than :data:`MAX_DEPTH`."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise NestingError(_message()) from None
    _check_depth(doc)
    return doc


def _check_depth(doc: dict[str, Any]) -> None:
    # Iterative: the document may be nested deeper than the interpreter recurses.
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise NestingError(_message())
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _message() -> str:
    return f"exceeded max depth: tables and arrays nest more than {MAX_DEPTH} levels"
