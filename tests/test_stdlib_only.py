"""Booted images run atoll with python3's standard library only (their units call
`atoll health boot`, `atoll finalize`, `atoll updates run`): the command line must
start without third-party packages, which are imported only by the commands
that need them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_command_line_starts_with_the_standard_library_only() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from atoll.cli.main import main; "
        "sys.exit(main(['status', '--help']))"
    )
    # -I -S: no site-packages, no user site, no environment: the standard library alone;
    # -B: -I ignores PYTHONDONTWRITEBYTECODE, and src/ gets no __pycache__.
    proc = subprocess.run(
        [sys.executable, "-B", "-I", "-S", "-c", code, str(SRC)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: atoll status" in proc.stdout
