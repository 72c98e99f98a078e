from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from atoll.cli import main as main_module
from atoll.pipeline.keys import generate_key_pair

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``atoll ARGS``; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main_module.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A plain (unencrypted) key pair: (private, public)."""
    pair = generate_key_pair(tmp_path / "signer")
    return pair.private_path, pair.public_path


@pytest.fixture
def other_keys(tmp_path: Path) -> tuple[Path, Path]:
    pair = generate_key_pair(tmp_path / "other")
    return pair.private_path, pair.public_path
