"""``atoll.workloads.unitfiles.generate``: what lands in a service stays on its own line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atoll.errors import QuadletUnitError
from atoll.workloads import generate_services, load_units
from atoll.workloads.unitfiles.quadlet import split_words

# systemd ends a unit file line at a newline, a carriage return or a NUL.
SYSTEMD_LINES = re.compile(r"\r\n|[\n\r\x00]")


def generated(root: Path) -> str:
    [service] = generate_services(load_units([root]))
    return service.render()


@pytest.mark.parametrize(
    "exec_line",
    [
        r'/bin/echo "a\rExecStartPre=/bin/touch /pwn"',
        r"/bin/echo a\rExecStartPre=/bin/touch\ /pwn",
        r'/bin/echo "a\x00b" "c\x1bd"',
    ],
)
def test_a_word_with_a_control_character_stays_one_word(tmp_path: Path, exec_line: str) -> None:
    (tmp_path / "app.container").write_text(f"[Container]\nImage=quay.io/x/a\nExec={exec_line}\n")
    text = generated(tmp_path)
    lines = SYSTEMD_LINES.split(text)
    assert not any(line.startswith("ExecStartPre") for line in lines)
    [start] = [line for line in lines if line.startswith("ExecStart=")]
    # systemd reads back the words the unit asked for.
    asked = split_words(exec_line)
    assert split_words(start.partition("=")[2])[-len(asked) :] == asked


def test_a_source_path_that_spans_lines_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "units\nExecStartPre=\r"
    root.mkdir()
    (root / "app.container").write_text("[Container]\nImage=quay.io/x/a\n")
    with pytest.raises(QuadletUnitError, match="would span lines"):
        generate_services(load_units([root]))


def test_escapes_read_as_systemd_reads_them() -> None:
    assert split_words(r'a\x01b "c\033d" e\u00e9f \s \q "\xZZ"') == [
        "a\x01b",
        "c\x1bd",
        "e\u00e9f",
        " ",
        "q",
        "xZZ",
    ]
