"""state.json: round trip, atomic writes, and unreadable or newer files."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError, LockedError, SysrootVersionError
from atoll.updates.state import (
    CheckRecord,
    ErrorRecord,
    UpdateState,
    state_path,
    updates_lock,
)

T = datetime.datetime(2026, 6, 1, 2, 17, 5, tzinfo=datetime.UTC)


def full_state() -> UpdateState:
    return UpdateState(
        last_run=T,
        last_action="staged",
        last_check=CheckRecord(T, True, "sha256:" + "2" * 64, "2.0"),
        last_error=ErrorRecord(T - datetime.timedelta(hours=1), "registry down", 22),
        failures=2,
        staged_at=T,
        staged_digest="sha256:" + "2" * 64,
        applied_at=T + datetime.timedelta(microseconds=250),
    )


@pytest.mark.parametrize("state", [UpdateState(), full_state()])
def test_json_round_trip(state: UpdateState) -> None:
    assert UpdateState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_file_round_trip_is_atomic(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    assert path == tmp_path / "atoll" / "updates" / "state.json"
    assert UpdateState.load(path) == UpdateState()
    full_state().save(path)
    assert UpdateState.load(path) == full_state()
    UpdateState().save(path)
    assert UpdateState.load(path) == UpdateState()
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_times_are_utc_with_z(tmp_path: Path) -> None:
    berlin = T.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    doc = UpdateState(last_run=berlin).to_json()
    assert doc["lastRun"] == "2026-06-01T02:17:05Z"
    assert doc["version"] == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"lastRun": "yesterday"}', "'yesterday' is not a time"),
        ('{"lastRun": "2026-06-01T02:00:00"}', "has no time zone"),
        ('{"lastCheck": "x"}', "malformed"),
        ('{"failures": "many"}', "malformed"),
    ],
)
def test_unreadable_state_says_it_can_be_deleted(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(InvalidInputError) as info:
        UpdateState.load(path)
    assert problem in info.value.message
    assert str(path) in info.value.message
    assert info.value.hint is not None and "delete the file" in info.value.hint


def test_newer_state_is_refused(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"version": 2}')
    with pytest.raises(SysrootVersionError):
        UpdateState.load(path)


def test_succeeded_clears_the_error_and_failed_counts() -> None:
    state = UpdateState().failed(T, "stage", "boom", 22).failed(T, "stage", "boom", 22)
    assert state.failures == 2
    assert state.retry_at() == T + datetime.timedelta(minutes=30)
    ok = state.succeeded(T, "staged", staged_at=T)
    assert ok.failures == 0 and ok.last_error is None and ok.retry_at() is None
    assert ok.staged_at == T and ok.last_action == "staged"


def test_one_run_at_a_time(tmp_path: Path) -> None:
    with updates_lock(tmp_path), pytest.raises(LockedError), updates_lock(tmp_path):
        pass
    with updates_lock(tmp_path):  # released
        pass
