"""atoll.run: the one way atoll starts programs."""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

import pytest

import atoll
from atoll.errors import ToolMissingError
from atoll.podman import find_podman, podman_environment
from atoll.run import PIPE, run, spawn

SRC = Path(atoll.__file__).parent


def _starts_programs(path: Path, root: Path = SRC) -> list[str]:
    """Where *path* reaches for the subprocess module (or asyncio's) itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Attribute) and (
            node.attr == "subprocess" or node.attr.startswith("create_subprocess")
        ):
            names = [node.attr]
        elif isinstance(node, ast.Name) and node.id == "subprocess":
            names = [node.id]
        if any(
            n.split(".")[-1] == "subprocess" or n.startswith("create_subprocess") for n in names
        ):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_only_atoll_run_starts_programs() -> None:
    found = [
        where
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "run.py"
        for where in _starts_programs(path)
    ]
    assert found == []


def test_the_check_finds_a_direct_call(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio\nimport subprocess as sp\n"
        "def f():\n    asyncio.create_subprocess_exec('x')\n"
    )
    assert _starts_programs(sample, tmp_path) == ["sample.py:2", "sample.py:4"]


def test_spawn_gives_a_clean_environment_and_no_stdin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ATOLL_TEST_SECRET", "not for children")
    code = "import os, sys; print('ATOLL_TEST_SECRET' in os.environ, repr(sys.stdin.read()))"
    with caplog.at_level(logging.DEBUG, logger="atoll.run"):
        proc = spawn([sys.executable, "-c", code], stdout=PIPE)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.decode().split() == ["False", "''"]
    assert "spawn: " in caplog.text and sys.executable in caplog.text


def test_spawn_names_a_missing_program() -> None:
    with pytest.raises(ToolMissingError, match="no-such-program-atoll is not installed"):
        spawn(["no-such-program-atoll"])


def test_a_python_child_writes_no_bytecode_when_its_parent_asked_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text("VALUE = 1\n")
    run([sys.executable, "-c", "import pkg.mod"], cwd=tmp_path)
    assert not list(tmp_path.rglob("__pycache__"))


def test_podman_gets_its_own_variables_and_nothing_else(tmp_path: Path) -> None:
    source = {
        "CONTAINERS_STORAGE_CONF": "/x/storage.conf",
        "PATH": str(tmp_path),
        "NOTIFY_SOCKET": "/run/notify",
        "SECRET": "no",
    }
    env = podman_environment(source, {"EXTRA": "1"})
    assert env["CONTAINERS_STORAGE_CONF"] == "/x/storage.conf" and env["EXTRA"] == "1"
    assert env["PATH"] == str(tmp_path)
    assert "NOTIFY_SOCKET" not in env and "SECRET" not in env
    with pytest.raises(ToolMissingError, match="podman is not installed; for a test"):
        find_podman(env, why="for a test")
