"""The fuzz targets in the suite: every kept input replayed, and a short seeded
coverage-guided run of each target (tests/fuzz/run.py; ``make fuzz`` runs
them for longer).  A finding fails with the input's file in .fuzz/crashes/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS
from helpers.parts import missing

HERE = Path(__file__).resolve().parent
#: Seconds of coverage-guided fuzzing per target in the suite (all targets
#: together stay under a minute with the interpreter's start).
SHORT_RUN = 1


def _inputs(folder: str) -> list[tuple[str, Path]]:
    return [
        (name, path)
        for name in TARGETS
        for path in sorted((HERE / folder / name).glob("*"))
        if (HERE / folder / name).is_dir()
    ]


@pytest.mark.parametrize(("name", "path"), _inputs("corpus"), ids=lambda v: getattr(v, "name", v))
def test_corpus(name: str, path: Path) -> None:
    """The target is the check: anything but a clean AtollError escapes it."""
    TARGETS[name](path.read_bytes())


@pytest.mark.parametrize(
    ("name", "path"), _inputs("regressions"), ids=lambda v: getattr(v, "name", v)
)
def test_regressions(name: str, path: Path) -> None:
    """Inputs the fuzzer once found failing: each is now a clean refusal."""
    TARGETS[name](path.read_bytes())


def test_every_target_has_seeds() -> None:
    for name in TARGETS:
        assert any((HERE / "corpus" / name).glob("seed-*")), name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(TARGETS))
def test_short_run(name: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        missing("atheris is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "run.py"),
            name,
            f"--seconds={SHORT_RUN}",
            "--seed=1",
            "--no-save",
            f"--work={tmp_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "inputs in" in proc.stdout.splitlines()[-1]
