"""The key table: the options classes and docs/workloads.md follow it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from atoll.workloads.unitfiles.keys import KEYS, OPTION_CLASSES, ValueKind, key_table_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workloads.md"
BEGIN, END = "<!-- key table: generated from KEYS -->\n", "<!-- end of key table -->\n"


def test_docs_key_table_is_the_codes() -> None:
    text = DOCS.read_text()
    assert BEGIN in text and END in text
    assert text.split(BEGIN, 1)[1].split(END, 1)[0] == "\n" + key_table_markdown() + "\n"


def test_options_classes_have_a_field_per_key() -> None:
    for kind, specs in KEYS.items():
        fields = {f.name: f for f in dataclasses.fields(OPTION_CLASSES[kind])}
        assert list(fields) == [s.field for s in specs], kind
        for spec in specs:
            default = fields[spec.field].default
            assert (default == ()) is spec.kind.many, (kind, spec.key)
            assert default is None or spec.kind.many
    assert sum(len(v) for v in KEYS.values()) == 200
    assert {s.kind for v in KEYS.values() for s in v} == set(ValueKind)
