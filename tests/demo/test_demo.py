from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.parts import require_tool


@pytest.mark.integration
def test_demo_runs_to_the_end_and_cleans_up(tmp_path: Path) -> None:
    for tool in ("docker-registry", "podman", "busybox"):
        require_tool(tool)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.run(
        [sys.executable, "-m", "atoll", "demo"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every copy has digest" in proc.stdout
    assert ": yes" in proc.stdout
    assert "What happened" in proc.stdout
    # Everything it made is gone, its registry stopped.
    assert list(scratch.iterdir()) == []
