"""Running a boot's checks in a chroot of a busybox system."""

from __future__ import annotations

import datetime
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from atoll.errors import HealthRunError
from atoll.health import (
    BootInfo,
    CheckKind,
    CheckStatus,
    HealthConfig,
    HealthReport,
    Outcome,
    load_config,
    run_boot_checks,
)
from helpers.busybox_root import (
    ETC_GREEN,
    ETC_REQUIRED,
    ETC_WANTED,
    GREEN,
    RED,
    REQUIRED,
    WANTED,
    BusyboxRoot,
    process_gone,
)

BOOT = BootInfo(deployment="d" * 64 + ".0", boot_id="b" * 32, attempt=2, max_attempts=3)


def run(root: BusyboxRoot, boot: BootInfo = BOOT, **kwargs: object) -> HealthReport:
    config, warnings = load_config(root.path)
    return run_boot_checks(
        root.path,
        chroot=True,
        config=config,
        boot_info=boot,
        config_warnings=warnings,
        **kwargs,  # type: ignore[arg-type]
    )


def by_name(report: HealthReport) -> dict[str, tuple[CheckKind, CheckStatus]]:
    return {c.name: (c.kind, c.status) for c in report.checks}


def test_all_green_runs_the_green_scripts(root: BusyboxRoot) -> None:
    root.script(REQUIRED, "10-ok.sh", "echo fine\n")
    root.script(WANTED, "20-also.sh", "touch /wanted-ran\n")
    root.script(GREEN, "50-mark.sh", 'echo "$ATOLL_HEALTH_KIND" > /green-ran\n')
    root.script(RED, "50-mark.sh", "touch /red-ran\n")
    report = run(root)
    assert report.outcome is Outcome.GREEN and report.green
    assert report.reason is None
    assert root.read("/green-ran") == "green\n"
    assert root.exists("/wanted-ran")
    assert not root.exists("/red-ran")
    assert [(c.kind, c.name, c.status) for c in report.checks] == [
        (CheckKind.WATCHDOG, "watchdog", CheckStatus.PASSED),
        (CheckKind.REQUIRED, "10-ok.sh", CheckStatus.PASSED),
        (CheckKind.WANTED, "20-also.sh", CheckStatus.PASSED),
        (CheckKind.GREEN, "50-mark.sh", CheckStatus.PASSED),
    ]
    ok = report.checks[1]
    assert (ok.exit_code, ok.output, ok.timed_out) == (0, "fine", False)
    assert (report.deployment, report.boot_id, report.attempt) == (
        BOOT.deployment,
        BOOT.boot_id,
        2,
    )
    assert report.started <= report.finished


def test_a_failed_required_check_makes_the_boot_red(
    root: BusyboxRoot, caplog: pytest.LogCaptureFixture
) -> None:
    root.script(REQUIRED, "10-net.sh", "echo trying; echo 'no route to host' >&2; exit 3\n")
    root.script(REQUIRED, "20-after.sh", "touch /after-ran\n")
    root.script(REQUIRED, "30-also-bad.sh", "exit 4\n")
    root.script(WANTED, "40-wanted.sh", "touch /wanted-ran\n")
    root.script(GREEN, "50-green.sh", "touch /green-ran\n")
    root.script(RED, "50-red.sh", 'echo "$ATOLL_HEALTH_REASON" > /red-ran\n')
    with caplog.at_level(logging.INFO, logger="atoll.health"):
        report = run(root)
    assert report.outcome is Outcome.RED
    # Every required check ran, like greenboot; the first failure is the reason.
    assert root.exists("/after-ran")
    assert report.reason is not None
    assert (report.reason.name, report.reason.exit_code) == ("10-net.sh", 3)
    assert report.reason.output == "trying\nno route to host"
    assert report.reason.path == "/usr/lib/greenboot/check/required.d/10-net.sh"
    assert report.reason.summary() == "required check 10-net.sh failed (exit code 3)"
    assert root.read("/red-ran") == "10-net.sh\n"
    assert not root.exists("/green-ran")
    assert not root.exists("/wanted-ran")
    assert by_name(report) == {
        "watchdog": (CheckKind.WATCHDOG, CheckStatus.PASSED),
        "10-net.sh": (CheckKind.REQUIRED, CheckStatus.FAILED),
        "20-after.sh": (CheckKind.REQUIRED, CheckStatus.PASSED),
        "30-also-bad.sh": (CheckKind.REQUIRED, CheckStatus.FAILED),
        "40-wanted.sh": (CheckKind.WANTED, CheckStatus.SKIPPED),
        "50-red.sh": (CheckKind.RED, CheckStatus.PASSED),
    }
    assert "required check 10-net.sh failed: exit code 3" in caplog.text


def test_a_failed_wanted_check_is_only_logged(
    root: BusyboxRoot, caplog: pytest.LogCaptureFixture
) -> None:
    root.script(REQUIRED, "10-ok.sh", "true\n")
    root.script(ETC_WANTED, "20-optional.sh", "echo degraded; exit 1\n")
    root.script(GREEN, "50-green.sh", "touch /green-ran\n")
    with caplog.at_level(logging.INFO, logger="atoll.health"):
        report = run(root)
    assert report.outcome is Outcome.GREEN
    assert root.exists("/green-ran")
    wanted = report.checks[2]
    assert (wanted.name, wanted.status, wanted.exit_code, wanted.output) == (
        "20-optional.sh",
        CheckStatus.FAILED,
        1,
        "degraded",
    )
    assert "wanted check 20-optional.sh failed: exit code 1" in caplog.text


def test_a_disabled_check_does_not_run(root: BusyboxRoot) -> None:
    root.conf('DISABLED_HEALTHCHECKS=(\n  "20-broken.sh"\n  "50-noisy.sh"\n)\n')
    root.script(REQUIRED, "10-ok.sh", "true\n")
    root.script(REQUIRED, "20-broken.sh", "touch /broken-ran; exit 1\n")
    root.script(ETC_GREEN, "50-noisy.sh", "touch /noisy-ran\n")
    report = run(root)
    assert report.outcome is Outcome.GREEN
    assert not root.exists("/broken-ran")
    assert not root.exists("/noisy-ran")
    disabled = {c.name: c for c in report.checks if c.status is CheckStatus.DISABLED}
    assert set(disabled) == {"20-broken.sh", "50-noisy.sh"}
    assert disabled["20-broken.sh"].problem == "disabled in greenboot.conf"
    assert disabled["20-broken.sh"].exit_code is None


def test_a_non_executable_required_check_fails_the_boot(root: BusyboxRoot) -> None:
    root.script(ETC_REQUIRED, "10-forgot-chmod.sh", "touch /ran\n", mode=0o644)
    root.script(WANTED, "20-forgot-too.sh", "touch /ran\n", mode=0o644)
    report = run(root)
    assert report.outcome is Outcome.RED
    assert not root.exists("/ran")
    assert report.reason is not None
    assert report.reason.exit_code is None
    assert report.reason.summary() == (
        "required check 10-forgot-chmod.sh failed "
        "(not executable (chmod +x /etc/greenboot/check/required.d/10-forgot-chmod.sh))"
    )
    assert any("20-forgot-too.sh: not executable" in w for w in report.warnings)


def test_a_hanging_check_is_killed_with_its_children(root: BusyboxRoot) -> None:
    root.conf("ATOLL_HEALTHCHECK_TIMEOUT=1\n")
    root.script(REQUIRED, "10-hang.sh", "sleep 1000 &\necho $! > /child.pid\necho waiting\nwait\n")
    root.script(REQUIRED, "20-next.sh", "touch /next-ran\n")
    report = run(root)
    hang = report.checks[1]
    assert hang.name == "10-hang.sh"
    assert hang.status is CheckStatus.FAILED
    assert hang.timed_out
    assert hang.problem == "timed out after 1 s"
    assert hang.output == "waiting"
    assert 1.0 <= hang.duration < 3.5
    assert process_gone(int(root.read("/child.pid")))
    assert report.reason is not None and report.reason.problem == "timed out after 1 s"
    assert root.exists("/next-ran")


def test_a_check_cannot_leave_processes_behind(root: BusyboxRoot) -> None:
    # It exits at once, but its child keeps the output pipe open.
    root.script(REQUIRED, "10-daemon.sh", "sleep 1000 &\necho $! > /child.pid\necho started\n")
    report = run(root)
    check = report.checks[1]
    assert (check.status, check.output) == (CheckStatus.PASSED, "started")
    assert check.duration < 1.0
    assert process_gone(int(root.read("/child.pid")))


def test_etc_replaces_usr_and_both_run_in_name_order(root: BusyboxRoot) -> None:
    for directory, name in (
        (REQUIRED, "10-a.sh"),
        (ETC_REQUIRED, "20-b.sh"),
        (REQUIRED, "40-d.sh"),
        (ETC_REQUIRED, "30-c.sh"),
    ):
        tree = directory.split("/")[0]
        root.script(directory, name, f"echo {name} {tree} >> /order\n")
    root.script(REQUIRED, "30-c.sh", "echo 30-c.sh usr >> /order; exit 1\n")
    report = run(root)
    assert report.outcome is Outcome.GREEN
    assert root.read("/order").splitlines() == [
        "10-a.sh usr",
        "20-b.sh etc",
        "30-c.sh etc",
        "40-d.sh usr",
    ]


def test_output_keeps_the_first_lines_and_a_bounded_tail(root: BusyboxRoot) -> None:
    root.script(WANTED, "10-chatty.sh", 'for i in $(seq 1 100); do echo "line $i"; done\n')
    root.script(
        WANTED,
        "20-wide.sh",
        "i=0; while [ $i -lt 300 ]; do printf 0123456789; i=$((i+1)); done; echo; echo end\n",
    )
    report = run(root)
    chatty, wide = report.checks[1], report.checks[2]
    lines = chatty.output.splitlines()
    # The first ten lines (where a script says why), a mark, the last lines: 40 in all.
    assert lines == [
        *(f"line {i}" for i in range(1, 11)),
        "[…]",
        *(f"line {i}" for i in range(72, 101)),
    ]
    # One 3000-byte line and "end": within 4 KiB, whole.
    assert wide.output == "0123456789" * 300 + "\nend"


def test_output_tail_is_cut_at_4_kib(root: BusyboxRoot) -> None:
    root.script(
        WANTED,
        "10-wide.sh",
        "i=0; while [ $i -lt 2000 ]; do printf 0123456789; i=$((i+1)); done; echo; echo end\n",
    )
    root.script(
        WANTED,
        "20-one-line.sh",
        "i=0; while [ $i -lt 2000 ]; do printf 0123456789; i=$((i+1)); done\n",
    )
    report = run(root)
    # 20000 bytes on one line, then "end": the line's first KiB, a mark, the tail
    # without what is left of the cut line.
    assert report.checks[1].output == ("0123456789" * 103)[:1024] + "\n[…]\nend"
    # Only one line, and no end of line: its first KiB, a mark and its last 4 KiB.
    start, end = ("0123456789" * 103)[:1024], ("0123456789" * 410)[-4096:]
    assert report.checks[2].output == f"{start}\n[…]\n{end}"


def test_scripts_get_a_clean_environment(
    root: BusyboxRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_SECRET", "leaked")
    root.script(REQUIRED, "10-env.sh", "env > /env.out; cat > /stdin.out; pwd > /pwd.out\n")
    root.script(RED, "10-never.sh", "true\n")
    report = run(root, env={"EXTRA": "given"})
    assert report.outcome is Outcome.GREEN
    env = dict(line.split("=", 1) for line in root.read("/env.out").splitlines())
    env.pop("PWD", None)
    env.pop("SHLVL", None)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "ATOLL_DEPLOYMENT": BOOT.deployment,
        "ATOLL_BOOT_ID": BOOT.boot_id,
        "ATOLL_BOOT_ATTEMPT": "2",
        "ATOLL_MAX_BOOT_ATTEMPTS": "3",
        "ATOLL_HEALTH_KIND": "required",
        "EXTRA": "given",
    }
    assert root.read("/stdin.out") == ""
    assert root.read("/pwd.out") == "/\n"


def test_the_chroot_has_proc_dev_fresh_run_and_tmp_and_binds(
    root: BusyboxRoot, tmp_path: Path
) -> None:
    var = tmp_path / "stateroot-var"
    var.mkdir()
    (root.path / "run" / "stale").write_text("from the image\n")
    root.script(
        REQUIRED,
        "10-look.sh",
        "test -r /proc/self/status && test -c /dev/null && test ! -e /run/stale "
        "&& touch /run/shared /tmp/shared /var/written\n",
    )
    root.script(REQUIRED, "20-shared.sh", "test -e /run/shared && test -e /tmp/shared\n")
    report = run(root, binds=[("/var", var)])
    assert report.outcome is Outcome.GREEN, report.reason
    assert (var / "written").exists()
    # Nothing was mounted or written on the host's side of the root.
    assert list((root.path / "var").iterdir()) == []
    assert sorted(p.name for p in (root.path / "run").iterdir()) == ["stale"]
    assert list((root.path / "proc").iterdir()) == []
    assert str(root.path) not in Path("/proc/self/mountinfo").read_text()


def test_a_script_without_shebang_runs_with_a_shell(root: BusyboxRoot) -> None:
    root.script(REQUIRED, "10-plain.sh", "echo $((6 * 7)) > /answer\n", shebang=False)
    report = run(root)
    assert report.outcome is Outcome.GREEN
    assert root.read("/answer") == "42\n"


def test_a_script_that_cannot_start_fails(root: BusyboxRoot) -> None:
    root.script(REQUIRED, "10-python.sh", "#!/usr/bin/python3\nprint(1)\n", shebang=False)
    report = run(root)
    assert report.outcome is Outcome.RED
    assert report.reason is not None
    assert report.reason.exit_code is None
    assert report.reason.problem == (
        "could not start: its interpreter /usr/bin/python3 does not exist"
    )


@pytest.mark.parametrize(
    ("reset", "age_hours", "enabled", "status"),
    [
        (None, 1, "true", CheckStatus.PASSED),
        (False, 1, "true", CheckStatus.PASSED),
        (True, 2, "true", CheckStatus.FAILED),
        (True, 30, "true", CheckStatus.PASSED),
        (True, 2, "false", CheckStatus.DISABLED),
    ],
)
def test_the_watchdog_check(
    root: BusyboxRoot, reset: bool | None, age_hours: int, enabled: str, status: CheckStatus
) -> None:
    root.conf(f"GREENBOOT_WATCHDOG_CHECK_ENABLED={enabled}\nGREENBOOT_WATCHDOG_GRACE_PERIOD=24\n")
    root.script(RED, "10-red.sh", "touch /red-ran\n")
    booted = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    boot = replace(
        BOOT,
        watchdog_reset=reset,
        deployed_at=booted - datetime.timedelta(hours=age_hours),
        booted_at=booted,
    )
    report = run(root, boot)
    watchdog = report.checks[0]
    assert (watchdog.name, watchdog.kind, watchdog.status) == (
        "watchdog",
        CheckKind.WATCHDOG,
        status,
    )
    assert report.green == (status is not CheckStatus.FAILED)
    assert root.exists("/red-ran") == (status is CheckStatus.FAILED)
    if status is CheckStatus.FAILED:
        assert report.reason is not None and report.reason.name == "watchdog"
        assert "watchdog reset 2.0 h after" in watchdog.output


def test_without_chroot_the_scripts_run_on_this_system(tmp_path: Path) -> None:
    root = tmp_path / "root"
    script = root / REQUIRED / "10-here.sh"
    script.parent.mkdir(parents=True)
    script.write_text('#!/bin/sh\ntouch "$MARK"\n')
    script.chmod(0o755)
    mark = tmp_path / "mark"
    report = run_boot_checks(
        root, chroot=False, config=HealthConfig(), boot_info=BOOT, env={"MARK": str(mark)}
    )
    assert report.outcome is Outcome.GREEN, report.reason
    assert mark.exists()


def test_refuses_what_it_cannot_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = HealthConfig()
    with pytest.raises(HealthRunError, match="no such directory"):
        run_boot_checks(tmp_path / "absent", chroot=False, config=config, boot_info=BOOT)
    with pytest.raises(HealthRunError, match="no directory to bind"):
        run_boot_checks(
            tmp_path, chroot=True, config=config, boot_info=BOOT, binds=[("/var", tmp_path)]
        )
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(HealthRunError, match=r"needs root \(chroot\)"):
        run_boot_checks(tmp_path, chroot=True, config=config, boot_info=BOOT)
