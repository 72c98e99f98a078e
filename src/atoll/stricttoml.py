"""TOML with bounded nesting, for every configuration file a user or an image gives.

:mod:`tomllib` recurses once per level of nested arrays and inline tables, so
deep nesting ends in ``RecursionError``, and dotted keys (``[a.a.a…]``) build
tables nested as deep as the key is long, which every later walk over the
document (validation, ``json.dumps``, ``repr``) recurses into.  No atoll file
nests deeper than a few levels: past :data:`atoll.strictjson.MAX_DEPTH` the text is refused with
:class:`NestingError`, a :class:`tomllib.TOMLDecodeError`, so callers report it
as they report any other malformed TOML.
"""

from __future__ import annotations

import tomllib
from typing import Any

from atoll.strictjson import depth_message, too_deep


class NestingError(tomllib.TOMLDecodeError):
    """Tables and arrays nest deeper than :data:`atoll.strictjson.MAX_DEPTH`."""


def loads(text: str) -> dict[str, Any]:
    """Parse *text* as TOML, refusing nesting deeper than :data:`atoll.strictjson.MAX_DEPTH`."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise NestingError(depth_message("tables and arrays")) from None
    if too_deep(doc):
        raise NestingError(depth_message("tables and arrays"))
    return doc
