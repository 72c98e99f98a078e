"""``atoll health run`` and ``atoll health status``, against a busybox root and a
directory device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.errors import HealthCheckFailedError
from atoll.health import RollbackRecord, read_last_report, record_rollback
from atoll.sysroot.layout import Sysroot
from helpers.busybox_root import GREEN, RED, REQUIRED, WANTED, BusyboxRoot, busybox_files
from helpers.osimage import build_os_image


def atoll(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> tuple[Any, str]:
    result = main(list(args))
    captured = capsys.readouterr()
    assert result == code, captured.err
    out = json.loads(captured.out) if "--json" in args else captured.out
    return out, captured.err


def test_run_on_a_root_green(root: BusyboxRoot, capsys: pytest.CaptureFixture[str]) -> None:
    root.script(REQUIRED, "10-ok.sh", "echo fine\n")
    root.script(GREEN, "90-done.sh", "touch /green-ran\n")
    report, err = atoll(capsys, "health", "run", "--root", str(root.path), "--json")
    assert report["outcome"] == "green"
    assert [c["name"] for c in report["checks"]] == ["watchdog", "10-ok.sh", "90-done.sh"]
    assert report["checks"][1]["output"] == "fine"
    assert root.exists("/green-ran")
    assert err == ""


def test_run_on_a_root_red_exits_46_and_says_why(
    root: BusyboxRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    root.conf("GREENBOOT_MAX_BOOT_ATTEMPTS=many\n")
    root.script(REQUIRED, "10-disk.sh", "echo '/data is full' >&2; exit 2\n")
    root.script(RED, "90-red.sh", "touch /red-ran\n")
    report, err = atoll(
        capsys,
        "health",
        "run",
        "--root",
        str(root.path),
        "--json",
        code=HealthCheckFailedError.exit_code,
    )
    assert HealthCheckFailedError.exit_code == 46
    assert report["outcome"] == "red"
    assert report["reason"]["name"] == "10-disk.sh"
    assert report["reason"]["exitCode"] == 2
    assert report["reason"]["output"] == "/data is full"
    assert len(report["warnings"]) == 1 and "GREENBOOT_MAX_BOOT_ATTEMPTS" in report["warnings"][0]
    assert root.exists("/red-ran")
    assert err.splitlines() == [
        "atoll: error: the boot is red: required check 10-disk.sh failed (exit code 2)",
        "hint: the red.d scripts have run; see atoll health status",
    ]


def test_run_human_output_and_no_sysroot(
    root: BusyboxRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    root.script(REQUIRED, "10-ok.sh", "true\n")
    root.script(WANTED, "20-flaky.sh", "echo timeout talking to ntp; exit 1\n")
    out, _ = atoll(capsys, "health", "run", "--root", str(root.path))
    lines = out.splitlines()
    assert lines[0].startswith("Boot is GREEN: deployment -")
    (wanted,) = [line for line in lines if "20-flaky.sh" in line]
    assert wanted.split()[:2] == ["wanted", "FAILED"]
    assert wanted.endswith(" s  20-flaky.sh: exit code 1")
    assert "      | timeout talking to ntp" in lines
    assert lines[-1] == "Not recorded: no sysroot (see --sysroot)"


def test_run_records_where_told(
    root: BusyboxRoot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root.script(REQUIRED, "10-ok.sh", "true\n")
    records = tmp_path / "elsewhere"
    atoll(capsys, "health", "run", "--root", str(root.path), "--sysroot", str(records), code=12)
    Sysroot(records).create()
    out, _ = atoll(capsys, "health", "run", "--root", str(root.path), "--sysroot", str(records))
    assert out.splitlines()[-1] == f"Recorded in {records}/atoll/health/last.json"
    last = read_last_report(records)
    assert last is not None and last.green


def test_a_directory_device_checks_its_booted_deployment(
    root: BusyboxRoot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (The root fixture is only there to skip where chroot is not allowed.)
    images = tmp_path / "images"
    build_os_image(
        images,
        "1",
        version="1.0",
        add=busybox_files({f"{REQUIRED}/10-ok.sh": "touch /var/lib/health/v1-was-here\n"}),
    )
    build_os_image(
        images,
        "2",
        version="2.0",
        add=busybox_files(
            {
                f"{REQUIRED}/10-ok.sh": (
                    'echo "attempt $ATOLL_BOOT_ATTEMPT of $ATOLL_MAX_BOOT_ATTEMPTS"; exit 7\n'
                )
            }
        ),
    )
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    atoll(capsys, "boot", *s)

    report, _ = atoll(capsys, "health", "run", *s, "--json")
    assert report["outcome"] == "green"
    assert report["attempt"] is None  # the installed deployment is not counted
    # The stateroot's /var was bound on the deployment's /var.
    assert (sysroot / "atoll/deploy/default/var/lib/health/v1-was-here").exists()
    v1 = report["deployment"]

    atoll(capsys, "switch", *s, f"oci:{images}:2", "--apply")
    report, _ = atoll(capsys, "health", "run", *s, "--json", code=46)
    assert report["deployment"] != v1
    assert (report["attempt"], report["maxAttempts"]) == (1, 3)
    assert report["reason"]["output"] == "attempt 1 of 3"

    record_rollback(
        sysroot,
        RollbackRecord(
            time="2026-01-01T00:00:00Z",
            from_deployment=report["deployment"],
            to_deployment=v1,
            reason=read_last_report(sysroot).reason,  # type: ignore[union-attr]
            attempts_used=3,
        ),
    )
    status, _ = atoll(capsys, "health", "status", *s, "--json")
    assert status["last"] == report
    # atoll boot and the boot of switch --apply assess too: green, green, then red twice.
    assert [h["outcome"] for h in status["history"]] == ["green", "green", "red", "red"]
    assert status["boot"]["deployment"] == report["deployment"]
    assert status["boot"]["booted"] is True
    assert (status["boot"]["assessing"], status["boot"]["triesLeft"]) == (True, 2)
    assert status["rollbacks"][0]["to"] == v1
    assert status["rollbacks"][0]["reason"]["exitCode"] == 7

    text, _ = atoll(capsys, "health", "status", *s)
    assert "being assessed, 2 attempts left (1 used)" in text
    assert "after 3 attempts: required check 10-ok.sh failed (exit code 7)" in text
    assert "Last 4 of 4 recorded runs: green green red red" in text

    # atoll boot counts as health does: the deployment's attempt, of how many.
    text, _ = atoll(capsys, "boot", *s, "--max-boots", "1", code=46)
    assert text.startswith("boot 1, attempt 2 of 3: "), text
    assert "1 try left" in text.splitlines()[0]
    assert "  | attempt 2 of 3" in text.splitlines()
    text, _ = atoll(capsys, "health", "status", *s)
    assert "boot attempt 2 of 3" in text


def test_status_of_a_sysroot_without_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    atoll(capsys, "health", "status", "--sysroot", str(tmp_path / "none"), code=12)


def test_boot_shows_the_failing_checks_output(
    root: BusyboxRoot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`atoll boot` named the red check and its exit code, not what the check said."""
    images = tmp_path / "images"
    # The reason first, then a long listing: the reason is what boot shows.
    failing = {
        f"{REQUIRED}/10-disk.sh": "echo '/data is full' >&2; "
        'for i in $(seq 1 30); do echo "file $i" >&2; done; exit 2\n'
    }
    build_os_image(images, "1", version="1.0", add=busybox_files(failing))
    sysroot = tmp_path / "sysroot"
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1")
    text, err = atoll(capsys, "boot", "--sysroot", str(sysroot), "--max-boots", "1", code=46)
    assert "required check 10-disk.sh failed (exit code 2)" in text
    lines = text.splitlines()
    assert "  | /data is full" in lines
    assert "  | file 9" in lines
    assert "  | file 10" not in lines
    assert "  | … 21 more lines in atoll health status --json" in lines
    assert err.startswith("atoll: error: the last boot is red")
    text, _ = atoll(capsys, "health", "status", "--sysroot", str(sysroot))
    assert "| /data is full" in text
    assert "| file 30" not in text
