"""``atoll.strictjson`` and ``atoll.stricttoml``: one unambiguous document or a refusal."""

from __future__ import annotations

import tomllib

import pytest

from atoll import strictjson, stricttoml
from atoll.strictjson import MAX_DEPTH, StrictJSONError


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_up_to_the_limit_is_read_and_one_more_is_refused() -> None:
    assert strictjson.loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(StrictJSONError, match="exceeded max depth"):
        strictjson.loads(nested(MAX_DEPTH + 1))
    # Past the interpreter's recursion limit too.
    with pytest.raises(StrictJSONError, match="exceeded max depth"):
        strictjson.loads(nested(200_000))


def test_brackets_inside_strings_are_text() -> None:
    assert strictjson.loads('{"a": "' + "[" * 5000 + '"}') == {"a": "[" * 5000}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1, "b": {"c": 1, "c": 1}}', 'duplicate key "c"'),
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b"\xff\xfe{\x00}\x00", "byte-order mark"),
        ("\ufeff{}", "byte-order mark"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": }', "not valid JSON"),
    ],
)
def test_ambiguous_or_malformed_text_is_refused(data: bytes | str, message: str) -> None:
    with pytest.raises(StrictJSONError, match=message):
        strictjson.loads(data)


def test_toml_nesting_is_bounded_and_reported_as_malformed_toml() -> None:
    inside = MAX_DEPTH - 1  # the document's table is the first level
    assert stricttoml.loads("x = " + "[" * inside + "]" * inside) is not None
    for text in ("x = " + "[" * 5000 + "]" * 5000, "[" + ".".join(["a"] * 5000) + "]"):
        with pytest.raises(tomllib.TOMLDecodeError, match="exceeded max depth"):
            stricttoml.loads(text)
