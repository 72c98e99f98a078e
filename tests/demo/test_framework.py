"""Stopping what the demo left running, by its record in demo.json."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from atoll.demo.framework import Demo, stop_recorded
from atoll.errors import DemoStateError


def test_a_kept_process_is_stopped_later_by_its_record(tmp_path: Path) -> None:
    demo = Demo(tmp_path, Console(file=io.StringIO()), {})
    bg = demo.start("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"])
    record = json.loads((tmp_path / "demo.json").read_text())
    assert [p["name"] for p in record["processes"]] == ["sleeper"]
    assert record["processes"][0]["pid"] == bg.proc.pid
    assert stop_recorded(tmp_path) == ["sleeper"]
    assert bg.proc.wait(timeout=30) != 0
    assert json.loads((tmp_path / "demo.json").read_text())["processes"] == []
    assert stop_recorded(tmp_path) == []


def test_stop_without_a_demo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DemoStateError, match="no demo was left running here") as info:
        stop_recorded(tmp_path)
    assert info.value.exit_code == 94
    proc = subprocess.run(
        [sys.executable, "-m", "atoll", "demo", "--stop", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 94
    assert "no demo.json" in proc.stderr
