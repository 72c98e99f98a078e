"""``atoll.configfile``: where a key of a TOML or JSON configuration file is."""

from __future__ import annotations

from atoll.configfile import KeyLines, at_line, json_key_lines, key_path, locate


def test_toml_keys_have_their_lines() -> None:
    lines = KeyLines('[download]\nwindow = "* 2 * * *"\n\n[[inhibitor]]\nname = "x"\n')
    assert lines.line_of(("download", "window")) == 2
    assert lines.line_of(("inhibitor", 0, "name")) == 5
    assert locate("u.toml", lines, ("download", "window")) == "u.toml: line 2: download.window: "


def test_json_keys_and_items_have_their_lines() -> None:
    text = '{\n  "a": [\n    1,\n    {"b": "x\\"y",\n     "c.d": [true]}\n  ],\n  "e": {}\n}\n'
    lines = json_key_lines(text)
    assert lines.lines == {
        ("a",): 2,
        ("a", 0): 3,
        ("a", 1): 4,
        ("a", 1, "b"): 4,
        ("a", 1, "c.d"): 5,
        ("a", 1, "c.d", 0): 5,
        ("e",): 7,
    }
    assert lines.line_of(("a", 1, "c.d", 0, "nothing")) == 5


def test_a_json_scan_that_cannot_finish_keeps_what_it_found() -> None:
    assert json_key_lines('{"a": 1,\n "b": [').lines == {("a",): 1, ("b",): 2}
    assert json_key_lines("").lines == {}


def test_json_paths_read_as_key_paths() -> None:
    assert key_path('$.transports.docker["quay.io/x"][0].keyPath') == (
        "transports",
        "docker",
        "quay.io/x",
        0,
        "keyPath",
    )
    assert key_path("$") == ()
    assert key_path("download.max-rate") == ("download", "max-rate")
    assert key_path("$.a..b") == ("a",)


def test_every_message_starts_the_same_way() -> None:
    assert at_line("f.conf", 3) == "f.conf: line 3: "
    assert at_line("f.conf", None) == "f.conf: "
