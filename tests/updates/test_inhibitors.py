"""Reboot inhibitors: files, commands, waiting with a fake clock, and --force."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from atoll.errors import RebootInhibitedError
from atoll.updates.clock import FakeClock
from atoll.updates.config import load_config
from atoll.updates.inhibitors import (
    InhibitorKind,
    check_inhibitors,
    ensure_reboot_allowed,
    wait_for_inhibitors,
)
from helpers.updates import write_config

T = datetime.datetime(2026, 6, 1, 3, 0, tzinfo=datetime.UTC)


def files_config(root: Path, *names: str) -> None:
    quoted = ", ".join(f'"{n}"' for n in names)
    write_config(root, f'policy = "apply"\n[inhibitors]\nfiles = [{quoted}]\n')


def test_no_inhibitors_configured(tmp_path: Path) -> None:
    write_config(tmp_path, 'policy = "apply"\n')
    assert check_inhibitors(load_config(tmp_path), tmp_path) == []


def test_file_inhibits_while_it_exists(tmp_path: Path) -> None:
    files_config(tmp_path, "/run/atoll/inhibit-reboot", "/var/lib/app/busy.lock")
    config = load_config(tmp_path)
    assert check_inhibitors(config, tmp_path) == []
    flag = tmp_path / "run" / "atoll" / "inhibit-reboot"
    flag.parent.mkdir(parents=True)
    flag.touch()
    held = check_inhibitors(config, tmp_path)
    assert [(i.kind, i.what, i.detail) for i in held] == [
        (InhibitorKind.FILE, "/run/atoll/inhibit-reboot", "exists")
    ]
    flag.unlink()
    assert check_inhibitors(config, tmp_path) == []


def test_dangling_symlink_counts_as_present(tmp_path: Path) -> None:
    files_config(tmp_path, "/run/inhibit")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "inhibit").symlink_to("/nonexistent/target")
    assert len(check_inhibitors(load_config(tmp_path), tmp_path)) == 1


def test_files_are_looked_up_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files_config(root, str(tmp_path / "outside"))
    (tmp_path / "outside").touch()
    assert check_inhibitors(load_config(root), root) == []


def write_script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_commands_inhibit_while_they_fail(tmp_path: Path) -> None:
    busy = write_script(
        tmp_path / "busy", "print('db migration running', file=sys.stderr)\nsys.exit(3)"
    )
    ready = write_script(tmp_path / "ready", "sys.exit(0)")
    write_config(
        tmp_path,
        f'[inhibitors]\ncommands = ["{ready}", "{busy} --now", "{tmp_path}/missing"]\n',
    )
    held = check_inhibitors(load_config(tmp_path), tmp_path)
    assert [(i.kind, i.what, i.detail) for i in held] == [
        (InhibitorKind.COMMAND, f"{busy} --now", "exited with 3: db migration running"),
        (InhibitorKind.COMMAND, f"{tmp_path}/missing", "not found"),
    ]


def test_command_that_cannot_run_inhibits(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    write_config(tmp_path, f'[inhibitors]\ncommands = ["{script}"]\n')
    held = check_inhibitors(load_config(tmp_path), tmp_path)
    assert len(held) == 1 and held[0].detail.startswith("cannot run")


class Flaky:
    """An inhibitor command that says "busy" a given number of times."""

    def __init__(self, busy_times: int) -> None:
        self.busy_times = busy_times
        self.calls = 0

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls += 1
        return (1, "busy") if self.calls <= self.busy_times else (0, "")


def test_wait_returns_once_inhibitors_let_go(tmp_path: Path) -> None:
    write_config(tmp_path, '[inhibitors]\ncommands = ["/usr/bin/app-ready"]\n')
    clock = FakeClock(T)
    command = Flaky(busy_times=3)
    wait_for_inhibitors(
        load_config(tmp_path), tmp_path, clock, datetime.timedelta(minutes=5), run_command=command
    )
    assert command.calls == 4
    assert clock.sleeps == [5.0, 5.0, 5.0]


def test_wait_gives_up_at_the_timeout_naming_the_holders(tmp_path: Path) -> None:
    files_config(tmp_path, "/run/inhibit")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "inhibit").touch()
    clock = FakeClock(T)
    with pytest.raises(RebootInhibitedError) as info:
        wait_for_inhibitors(load_config(tmp_path), tmp_path, clock, 12, poll=5)
    assert clock.sleeps == [5, 5, 2]
    assert clock.now() == T + datetime.timedelta(seconds=12)
    err = info.value
    assert err.exit_code == 48
    assert err.message == "reboot inhibited after waiting 12 s by /run/inhibit (exists)"
    assert err.holders == ("/run/inhibit (exists)",)
    assert err.hint is not None and "--force" in err.hint


def test_zero_timeout_refuses_at_once(tmp_path: Path) -> None:
    write_config(tmp_path, '[inhibitors]\ncommands = ["/usr/bin/app-ready"]\n')
    clock = FakeClock(T)
    with pytest.raises(RebootInhibitedError, match=r"^reboot inhibited by /usr/bin/app-ready"):
        wait_for_inhibitors(load_config(tmp_path), tmp_path, clock, 0, run_command=Flaky(9))
    assert clock.sleeps == []


def test_ensure_reboot_allowed_for_upgrade_apply(tmp_path: Path) -> None:
    files_config(tmp_path, "/run/inhibit")
    clock = FakeClock(T)
    assert ensure_reboot_allowed(tmp_path, clock) == []
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "inhibit").touch()
    with pytest.raises(RebootInhibitedError):
        ensure_reboot_allowed(tmp_path, clock)
    # --force: no error, no wait; what was ignored is returned.
    ignored = ensure_reboot_allowed(tmp_path, clock, force=True)
    assert [i.what for i in ignored] == ["/run/inhibit"]
    assert clock.sleeps == []


def test_ensure_reboot_allowed_without_config(tmp_path: Path) -> None:
    assert ensure_reboot_allowed(tmp_path, FakeClock(T)) == []
