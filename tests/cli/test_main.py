"""The top of the command line: which command modules a run loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atoll.cli.main import main
from atoll.cli.parser import COMMAND_MODULES, build_parser, command_of


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["image", "copy", "a", "b"], "image"),
        (["-v", "--json", "status"], "status"),
        (["--progress-fd", "3", "upgrade"], "upgrade"),
        (["--sysroot", "/x", "--force", "status"], "status"),
        (["--help"], None),
        ([], None),
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in [*COMMAND_MODULES, "demo", "version"]:
        assert f"    {command} " in text or f"    {command}\n" in text, command
    subcommands = build_parser([])._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(COMMAND_MODULES) <= set(subcommands)


def test_an_image_command_does_not_load_the_device_code() -> None:
    """Start-up time is part of every command: `atoll image …` must not pay for the
    sysroot, the store or the health checks."""
    code = (
        "import sys; from atoll.cli.parser import build_parser; "
        "build_parser(['image', 'copy', 'a', 'b']); "
        "print(sorted(m for m in sys.modules if m.startswith(('atoll.sysroot', 'atoll.store', "
        "'atoll.health', 'atoll.updates', 'atoll.device'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
