"""Structured fuzzing of the JSON and TOML readers (hypothesis, derandomized):
documents made of each format's own keys with values of any type and shape,
which byte mutation rarely builds.  The property is the targets' own (only
AtollError escapes; tests/fuzz/targets.py)."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent
#: FUZZ_EXAMPLES=N FUZZ_RANDOM=1 runs more documents, not the suite's fixed ones.
SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    deadline=None,
)


def _keys(dictionary: str) -> list[str]:
    """The plain words of a libFuzzer dictionary (tests/fuzz/dicts/)."""
    out = []
    for line in (HERE / "dicts" / f"{dictionary}.dict").read_text().splitlines():
        word = line[1:-1].replace("\\x22", "")  # JSON keys are written with their quotes
        if line.startswith('"') and re.fullmatch(r"[A-Za-z][\w.-]*", word):
            out.append(word)
    return out


_JSON_KEYS = [k for k in _keys("json") if k not in ("true", "false", "null")]
_TOML_KEYS = [k for k in _keys("toml") if k not in ("true", "false", "inf", "nan")]
_DIGEST = "sha256:" + "a" * 64
_TEXTS = st.sampled_from(["", "x", _DIGEST, "2026-01-02T03:04:05Z", "1h", "a/b:1", "*"])
_SCALARS = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | _TEXTS
    | st.text(max_size=8)
    | st.sampled_from(_JSON_KEYS)
)


def _documents(keys: list[str], *, none: bool) -> st.SearchStrategy[dict[str, Any]]:
    scalars = (_SCALARS | st.none()) if none else _SCALARS
    names = st.sampled_from(keys) | st.text(max_size=4)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=4),
        max_leaves=20,
    )
    return st.dictionaries(names, values, max_size=6)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(document: dict[str, Any]) -> bytes:
    """TOML for *document*: scalars first, tables and arrays of tables after."""
    lines = []
    tables = []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append(f"[{json.dumps(key)}]")
            tables += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"[[{json.dumps(key)}]]")
                tables += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    return "\n".join(lines + tables).encode()


@SETTINGS
@given(_documents(_JSON_KEYS, none=True), st.integers(min_value=0, max_value=15))
def test_json_documents(document: dict[str, Any], media_type: int) -> None:
    raw = json.dumps(document).encode()
    TARGETS["manifest"](bytes([media_type]) + raw)
    TARGETS["policy"](raw)
    TARGETS["auth"](raw)


@SETTINGS
@given(_documents(_JSON_KEYS, none=True), _documents(_JSON_KEYS, none=True))
def test_bundle_documents(description: dict[str, Any], manifest: dict[str, Any]) -> None:
    description.setdefault("atollBundle", 1)
    top = dict(manifest, config={"mediaType": "x", "digest": "@D0@", "size": 1})
    parts = [json.dumps(description), "{}", json.dumps(manifest), json.dumps(top)]
    TARGETS["bundle"]("\0".join(parts).encode())


@SETTINGS
@given(_documents(_TOML_KEYS, none=False))
def test_toml_documents(document: dict[str, Any]) -> None:
    raw = _toml(document)
    TARGETS["blueprint"](raw)
    TARGETS["updates"](raw)
    TARGETS["registries"](raw)


# --- every value of every seed replaced by one of another type ------------------------

_REPLACEMENTS: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", "\u00e9", "a\0b"]
_REPLACEMENTS += [[], [1], {}, {"x": 1}]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _replaced(document: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[path[0]] = _replaced(document[path[0]], path[1:], new)
    return copy


def _variants(document: Any, *, none: bool = True) -> list[Any]:
    return [
        _replaced(document, path, new)
        for path in _paths(document)[1:]
        for new in _REPLACEMENTS
        if none or new is not None
    ]


def _seed(target: str, name: str, skip: int = 0) -> bytes:
    return (HERE / "corpus" / target / f"seed-{name}").read_bytes()[skip:]


@pytest.mark.parametrize(
    ("target", "seed", "prefix"),
    [
        ("manifest", "manifest", b"\1"),
        ("manifest", "index", b"\2"),
        ("manifest", "config", b"\3"),
        ("policy", "scoped", b""),
        ("policy", "key-data", b""),
        ("auth", "auth.json", b""),
    ],
)
def test_json_seeds_with_a_value_of_another_type(target: str, seed: str, prefix: bytes) -> None:
    document = json.loads(_seed(target, seed, len(prefix)))
    for variant in _variants(document):
        TARGETS[target](prefix + json.dumps(variant).encode())


def test_bundle_seed_with_a_value_of_another_type() -> None:
    parts = _seed("bundle", "parts").split(b"\0")
    for i, part in enumerate(parts):
        for variant in _variants(json.loads(part)):
            changed = [*parts[:i], json.dumps(variant).encode(), *parts[i + 1 :]]
            TARGETS["bundle"](b"\0".join(changed))


def _inline_toml(document: dict[str, Any]) -> bytes:
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in document.items()).encode()


@pytest.mark.parametrize(
    ("target", "seed"), [("blueprint", "full"), ("updates", "full"), ("registries", "full")]
)
def test_toml_seeds_with_a_value_of_another_type(target: str, seed: str) -> None:
    document = tomllib.loads(_seed(target, seed).decode())
    for variant in _variants(document, none=False):
        TARGETS[target](_inline_toml(variant))
