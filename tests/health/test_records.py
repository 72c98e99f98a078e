from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError, SysrootVersionError
from atoll.health import (
    HISTORY_LIMIT,
    ROLLBACK_LIMIT,
    BootOutcome,
    CheckKind,
    CheckResult,
    CheckStatus,
    FailureReason,
    HealthReport,
    Outcome,
    RollbackRecord,
    health_dir,
    read_history,
    read_last_report,
    read_rollbacks,
    record_report,
    record_rollback,
)

FAILED = CheckResult(
    "20-net.sh",
    CheckKind.REQUIRED,
    "/etc/greenboot/check/required.d/20-net.sh",
    CheckStatus.FAILED,
    exit_code=3,
    duration=0.25,
    output="no route\nto host",
)
REPORT = HealthReport(
    deployment="a" * 64 + ".1",
    boot_id="f" * 32,
    started="2026-01-01T00:00:00Z",
    finished="2026-01-01T00:00:02Z",
    outcome=Outcome.RED,
    checks=(
        CheckResult("watchdog", CheckKind.WATCHDOG, "(built-in)", CheckStatus.PASSED, 0),
        FAILED,
        CheckResult(
            "30-hang.sh",
            CheckKind.REQUIRED,
            "/usr/lib/greenboot/check/required.d/30-hang.sh",
            CheckStatus.FAILED,
            exit_code=143,
            duration=1.002,
            timed_out=True,
            problem="timed out after 1 s",
        ),
        CheckResult(
            "40-w.sh",
            CheckKind.WANTED,
            "/usr/lib/greenboot/check/wanted.d/40-w.sh",
            CheckStatus.SKIPPED,
            problem="not run: a required check failed",
        ),
    ),
    reason=FailureReason.of(FAILED),
    attempt=2,
    max_attempts=3,
    warnings=("greenboot.conf: line 3: not a KEY=VALUE line; ignored",),
)


def test_a_report_survives_json() -> None:
    data = json.loads(json.dumps(REPORT.to_json()))
    assert HealthReport.from_json(data) == REPORT
    green = replace(REPORT, outcome=Outcome.GREEN, reason=None, attempt=None)
    assert HealthReport.from_json(green.to_json()) == green


def test_a_malformed_or_newer_report_is_refused() -> None:
    with pytest.raises(SysrootVersionError, match="health report format 2 is newer"):
        HealthReport.from_json({**REPORT.to_json(), "version": 2})
    with pytest.raises(InvalidInputError, match="not a valid health report"):
        HealthReport.from_json({**REPORT.to_json(), "outcome": "amber"})
    with pytest.raises(InvalidInputError, match="not a JSON object"):
        HealthReport.from_json([])


def test_records_keep_the_last_report_and_a_history(tmp_path: Path) -> None:
    assert read_last_report(tmp_path) is None
    assert read_history(tmp_path) == []
    last = record_report(tmp_path, REPORT)
    assert last == tmp_path / "atoll/health/last.json"
    green = replace(REPORT, outcome=Outcome.GREEN, reason=None, boot_id="2" * 32)
    record_report(tmp_path, green)
    assert read_last_report(tmp_path) == green
    assert read_history(tmp_path) == [BootOutcome.of(REPORT), BootOutcome.of(green)]
    first = read_history(tmp_path)[0]
    assert (first.outcome, first.reason_name, first.reason_exit_code, first.attempt) == (
        Outcome.RED,
        "20-net.sh",
        3,
        2,
    )
    # Nothing but the records themselves: no temporary files left.
    assert sorted(p.name for p in health_dir(tmp_path).iterdir()) == [
        "history.jsonl",
        "last.json",
    ]


def test_the_history_keeps_the_last_50(tmp_path: Path) -> None:
    for n in range(HISTORY_LIMIT + 7):
        record_report(tmp_path, replace(REPORT, boot_id=f"{n:032d}"))
    history = read_history(tmp_path)
    assert len(history) == HISTORY_LIMIT == 50
    assert history[0].boot_id == f"{7:032d}"
    assert history[-1].boot_id == f"{HISTORY_LIMIT + 6:032d}"


def test_rollbacks_are_recorded_in_order_and_bounded(tmp_path: Path) -> None:
    assert read_rollbacks(tmp_path) == []
    rollback = RollbackRecord(
        time="2026-01-01T00:10:00Z",
        from_deployment="a" * 64 + ".1",
        to_deployment="b" * 64 + ".0",
        reason=REPORT.reason,
        attempts_used=3,
    )
    crashed = replace(rollback, reason=None, time="2026-01-02T00:00:00Z")
    record_rollback(tmp_path, rollback)
    record_rollback(tmp_path, crashed)
    assert read_rollbacks(tmp_path) == [rollback, crashed]
    for n in range(ROLLBACK_LIMIT):
        record_rollback(tmp_path, replace(rollback, attempts_used=n))
    kept = read_rollbacks(tmp_path)
    assert len(kept) == ROLLBACK_LIMIT
    assert [r.attempts_used for r in kept[:2]] == [0, 1]


def test_newer_or_broken_records_are_refused(tmp_path: Path) -> None:
    record_report(tmp_path, REPORT)
    directory = health_dir(tmp_path)
    history = directory / "history.jsonl"
    history.write_text(history.read_text() + json.dumps({"version": 2}) + "\n")
    with pytest.raises(SysrootVersionError, match=r"history.jsonl:2: health history format 2"):
        read_history(tmp_path)
    history.write_text("{not json\n")
    with pytest.raises(InvalidInputError, match=r"history.jsonl:1: not JSON"):
        read_history(tmp_path)
    (directory / "rollbacks.json").write_text(json.dumps({"version": 9, "rollbacks": []}))
    with pytest.raises(SysrootVersionError, match="rollback history format 9 is newer"):
        read_rollbacks(tmp_path)
    (directory / "rollbacks.json").write_text(json.dumps({"version": 1, "rollbacks": [{}]}))
    with pytest.raises(InvalidInputError, match="rollback 1: not a valid record"):
        read_rollbacks(tmp_path)
    (directory / "last.json").write_text(json.dumps({**REPORT.to_json(), "version": 5}))
    with pytest.raises(SysrootVersionError):
        read_last_report(tmp_path)
