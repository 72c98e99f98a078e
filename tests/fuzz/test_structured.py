"""Structured fuzzing of the JSON and TOML readers (hypothesis, derandomized):
documents made of each format's own keys with values of any type and shape,
which byte mutation rarely builds.  The property is the targets' own (only
AtollError escapes; tests/fuzz/targets.py)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypothesis")
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
