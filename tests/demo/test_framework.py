"""Stopping what the demo left running, by its record in demo.json."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from atoll.demo.framework import Demo, FileWatch, stop_recorded
from atoll.errors import DemoStateError, DemoStepError


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


def test_a_file_watch_answers_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    changed = FileWatch(path, every=3600)
    assert changed()  # the first time: the state was never read
    assert not changed()
    path.write_text("one\n")
    assert changed()
    assert not changed()
    with path.open("a") as f:
        f.write("two\n")
    assert changed()
    path.unlink()
    assert changed()
    assert not changed()


def test_a_file_watch_answers_again_after_its_interval(tmp_path: Path) -> None:
    changed = FileWatch(tmp_path / "quiet", every=0)
    assert changed()
    assert changed()


def test_commands_run_together_come_back_in_order_and_checked(tmp_path: Path) -> None:
    demo = Demo(tmp_path, Console(file=io.StringIO()), {})
    runs = [
        (
            [sys.executable, "-c", f"import time; time.sleep({0.5 - n / 10}); print({n})"],
            [f"job{n}"],
            None,
        )
        for n in range(3)
    ]
    done = demo.commands_together(runs)
    assert [d.stdout.strip() for d in done] == ["0", "1", "2"]
    failing = demo.commands_together(
        [([sys.executable, "-c", "raise SystemExit(3)"], ["bad"], None)]
    )
    assert failing[0].returncode == 3
    with pytest.raises(DemoStepError, match="bad exited with 3"):
        failing[0].check()
