"""The decision engine, driven by a fake clock: windows over a week, the random
delay across a fleet, the policies, inhibitors, backoff and --force."""

from __future__ import annotations

import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from atoll.updates.clock import FakeClock
from atoll.updates.config import UpdatesConfig, parse_config
from atoll.updates.inhibitors import Inhibitor, InhibitorKind
from atoll.updates.policy import Action, DeviceFacts, StagedUpdate, decide, device_delay
from atoll.updates.state import ErrorRecord, UpdateState

UTC = datetime.UTC
BERLIN = ZoneInfo("Europe/Berlin")
# 2026-06-01 is a Monday.
MONDAY = datetime.datetime(2026, 6, 1, tzinfo=UTC)
STAGED = StagedUpdate("2" * 64 + ".0", "sha256:" + "2" * 64, "2.0", download_only=False)
HELD = (Inhibitor(InhibitorKind.FILE, "/run/atoll/inhibit-reboot", "exists"),)


def config(text: str) -> UpdatesConfig:
    return parse_config(text, Path("/etc/atoll/updates.toml"))


def clock_at(*args: int, tz: datetime.tzinfo = UTC) -> FakeClock:
    return FakeClock(datetime.datetime(*args, tzinfo=tz))  # type: ignore[misc]


NO_STATE = UpdateState()
DEVICE = DeviceFacts(seed="machine-id:test")


def utc(when: datetime.datetime | None) -> datetime.datetime | None:
    return when.astimezone(UTC) if when is not None else None


# --- the policies ---------------------------------------------------------------------------


def test_policy_none_never_acts() -> None:
    cfg = config('policy = "none"\n')
    clock = FakeClock(MONDAY)
    for _ in range(7 * 24):
        decision = decide(cfg, clock, NO_STATE, DeviceFacts("x", STAGED, HELD))
        assert decision.action is Action.IDLE
        assert decision.next_opportunity is None
        clock.advance(datetime.timedelta(hours=1))
    assert "off" in decision.reason


@pytest.mark.parametrize(
    ("policy", "action"),
    [("check", Action.CHECK), ("stage", Action.STAGE), ("apply", Action.APPLY)],
)
def test_policy_acts_at_once_without_windows(policy: str, action: Action) -> None:
    decision = decide(config(f'policy = "{policy}"\n'), FakeClock(MONDAY), NO_STATE, DEVICE)
    assert decision.action is action
    assert decision.next_opportunity == MONDAY
    assert decision.download_open and decision.apply_open


def test_apply_with_nothing_staged_stages_first() -> None:
    decision = decide(config('policy = "apply"\n'), FakeClock(MONDAY), NO_STATE, DEVICE)
    assert decision.action is Action.APPLY and decision.stage_first


def test_apply_staged_outside_download_window_applies_without_staging() -> None:
    cfg = config('policy = "apply"\n[download]\nwindow = "* 2 * * *"\n')
    decision = decide(cfg, clock_at(2026, 6, 1, 12, 0), NO_STATE, DeviceFacts("x", STAGED))
    assert decision.action is Action.APPLY
    assert not decision.stage_first


def test_apply_waits_for_the_apply_window_but_stages_now() -> None:
    cfg = config('policy = "apply"\n[apply]\nwindow = "* 3 * * sun"\n')
    decision = decide(cfg, FakeClock(MONDAY), NO_STATE, DEVICE)
    assert decision.action is Action.STAGE
    assert "2026-06-07 03:00 UTC" in decision.reason
    # Once staged, nothing to do until Sunday 03:00.
    decision = decide(cfg, FakeClock(MONDAY), NO_STATE, DeviceFacts("x", STAGED))
    assert decision.action is Action.STAGE  # the download window is open: look for newer
    cfg = config(
        'policy = "apply"\n[download]\nwindow = "* 1 * * *"\n[apply]\nwindow = "* 3 * * sun"\n'
    )
    decision = decide(cfg, clock_at(2026, 6, 1, 12, 0), NO_STATE, DeviceFacts("x", STAGED))
    assert decision.action is Action.IDLE
    # The download window (tomorrow 01:00) opens before the apply window (Sunday).
    assert utc(decision.next_opportunity) == datetime.datetime(2026, 6, 2, 1, 0, tzinfo=UTC)
    decision = decide(cfg, clock_at(2026, 6, 7, 2, 0), NO_STATE, DeviceFacts("x", STAGED))
    assert decision.action is Action.IDLE
    assert utc(decision.next_opportunity) == datetime.datetime(2026, 6, 7, 3, 0, tzinfo=UTC)
    assert "apply window" in decision.reason
    decision = decide(cfg, clock_at(2026, 6, 7, 3, 30), NO_STATE, DeviceFacts("x", STAGED))
    assert decision.action is Action.APPLY


def test_download_only_staged_update_is_left_alone() -> None:
    staged = StagedUpdate("x.0", "sha256:" + "3" * 64, "3.0", download_only=True)
    for policy in ("check", "stage", "apply"):
        decision = decide(
            config(f'policy = "{policy}"\n'), FakeClock(MONDAY), NO_STATE, DeviceFacts("x", staged)
        )
        assert decision.action is Action.IDLE
        assert "--from-downloaded" in decision.reason


# --- inhibitors -----------------------------------------------------------------------------


def test_inhibitor_holds_a_staged_apply() -> None:
    decision = decide(
        config('policy = "apply"\n'), FakeClock(MONDAY), NO_STATE, DeviceFacts("x", STAGED, HELD)
    )
    assert decision.action is Action.WAIT
    assert decision.inhibitors == HELD
    assert "/run/atoll/inhibit-reboot (exists)" in decision.reason
    assert decision.next_opportunity is None


def test_inhibitor_turns_apply_into_stage_when_nothing_is_staged() -> None:
    decision = decide(
        config('policy = "apply"\n'), FakeClock(MONDAY), NO_STATE, DeviceFacts("x", None, HELD)
    )
    assert decision.action is Action.STAGE
    assert "inhibited" in decision.reason


def test_inhibitors_do_not_matter_to_stage_policy() -> None:
    decision = decide(
        config('policy = "stage"\n'), FakeClock(MONDAY), NO_STATE, DeviceFacts("x", STAGED, HELD)
    )
    assert decision.action is Action.STAGE


def test_force_ignores_inhibitors_windows_and_backoff() -> None:
    cfg = config(
        'policy = "apply"\n[download]\nwindow = "* 2 * * *"\nrandom_delay = "1h"\n'
        '[apply]\nwindow = "* 3 * * sun"\n'
    )
    failed = UpdateState(last_error=ErrorRecord(MONDAY, "boom", 22), failures=5)
    clock = clock_at(2026, 6, 1, 0, 10)
    facts = DeviceFacts("x", STAGED, HELD)
    assert decide(cfg, clock, failed, facts).action is Action.IDLE
    forced = decide(cfg, clock, failed, facts, force=True)
    assert forced.action is Action.APPLY
    assert forced.stage_first  # the download window counts as open too


# --- backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(("failures", "minutes"), [(1, 15), (2, 30), (3, 60), (6, 360), (40, 360)])
def test_backoff_after_failures(failures: int, minutes: int) -> None:
    cfg = config('policy = "stage"\n')
    state = UpdateState(last_error=ErrorRecord(MONDAY, "registry down", 22), failures=failures)
    retry = MONDAY + datetime.timedelta(minutes=minutes)
    early = decide(cfg, FakeClock(retry - datetime.timedelta(seconds=1)), state, DEVICE)
    assert early.action is Action.IDLE
    assert early.next_opportunity == retry
    assert "registry down" in early.reason
    assert decide(cfg, FakeClock(retry), state, DEVICE).action is Action.STAGE


# --- windows over a simulated week --------------------------------------------------------


def test_download_window_over_a_week_in_berlin() -> None:
    """Every 10 minutes for a week: stage exactly inside Mon-Fri 02:00-04:59 Berlin
    time, and whenever idle, the next opportunity is the next step that stages."""
    cfg = config(
        'policy = "stage"\n[download]\nwindow = "* 2-4 * * mon-fri"\ntimezone = "Europe/Berlin"\n'
    )
    clock = FakeClock(datetime.datetime(2026, 6, 1, 0, 0, tzinfo=BERLIN))
    steps = []
    for _ in range(7 * 24 * 6):
        decision = decide(cfg, clock, NO_STATE, DEVICE)
        steps.append((clock.now(), decision))
        clock.advance(datetime.timedelta(minutes=10))
    staging = [t for t, d in steps if d.action is Action.STAGE]
    assert len(staging) == 5 * 3 * 6
    for now, decision in steps:
        local = now.astimezone(BERLIN)
        inside = local.weekday() < 5 and 2 <= local.hour <= 4
        assert (decision.action is Action.STAGE) == inside, local
        assert decision.download_open == inside
    for i, (now, decision) in enumerate(steps):
        if decision.action is Action.IDLE:
            following = next((t for t, _ in steps[i:] if t in staging), None)
            if following is not None:
                assert utc(decision.next_opportunity) == following, now
            assert "outside the download window" in decision.reason


def test_apply_window_over_a_week() -> None:
    cfg = config('policy = "apply"\n[apply]\nwindow = "* 3 * * sun"\n')
    clock = FakeClock(MONDAY)
    applied = []
    for _ in range(7 * 24 * 4):
        decision = decide(cfg, clock, NO_STATE, DeviceFacts("x", STAGED))
        if decision.action is Action.APPLY:
            applied.append(clock.now())
        else:
            assert decision.action is Action.STAGE
        clock.advance(datetime.timedelta(minutes=15))
    sunday_3 = datetime.datetime(2026, 6, 7, 3, 0, tzinfo=UTC)
    assert applied == [sunday_3 + datetime.timedelta(minutes=15 * i) for i in range(4)]


def test_spring_forward_day_window_is_shorter() -> None:
    # 2026-03-29: Berlin skips 02:00-02:59, so "* 2-4" is open 03:00-04:59 CEST only.
    cfg = config(
        'policy = "check"\n[download]\nwindow = "* 2-4 * * *"\ntimezone = "Europe/Berlin"\n'
    )
    clock = FakeClock(datetime.datetime(2026, 3, 29, 0, 0, tzinfo=UTC))
    open_minutes = 0
    for _ in range(24 * 60):
        if decide(cfg, clock, NO_STATE, DEVICE).action is Action.CHECK:
            open_minutes += 1
        clock.advance(datetime.timedelta(minutes=1))
    assert open_minutes == 2 * 60


def test_fall_back_day_window_is_longer() -> None:
    cfg = config(
        'policy = "check"\n[download]\nwindow = "* 2-4 * * *"\ntimezone = "Europe/Berlin"\n'
    )
    clock = FakeClock(datetime.datetime(2026, 10, 24, 22, 0, tzinfo=UTC))
    open_minutes = 0
    for _ in range(24 * 60):
        if decide(cfg, clock, NO_STATE, DEVICE).action is Action.CHECK:
            open_minutes += 1
        clock.advance(datetime.timedelta(minutes=1))
    assert open_minutes == 4 * 60


# --- the random delay -------------------------------------------------------------------------


def test_random_delay_spreads_a_fleet_and_is_stable() -> None:
    maximum = datetime.timedelta(minutes=30)
    delays = [device_delay(f"machine-id:{i:032x}", maximum) for i in range(100)]
    assert all(datetime.timedelta(0) <= d <= maximum for d in delays)
    assert len(set(delays)) > 90
    assert min(delays) < datetime.timedelta(minutes=5)
    assert max(delays) > datetime.timedelta(minutes=25)
    again = [device_delay(f"machine-id:{i:032x}", maximum) for i in range(100)]
    assert again == delays
    assert device_delay("machine-id:x", datetime.timedelta(0)) == datetime.timedelta(0)


def test_random_delay_shifts_each_devices_window() -> None:
    cfg = config('policy = "stage"\n[download]\nwindow = "* 2-3 * * *"\nrandom_delay = "30m"\n')
    devices = [DeviceFacts(f"machine-id:{i:032x}") for i in range(100)]
    start = datetime.datetime(2026, 6, 1, 1, 30, tzinfo=UTC)
    first_action: dict[str, datetime.datetime] = {}
    clock = FakeClock(start)
    for _ in range(70):  # until 02:40: every device has started by 02:31
        for facts in devices:
            decision = decide(cfg, clock, NO_STATE, facts)
            if decision.action is Action.STAGE:
                first_action.setdefault(facts.seed, clock.now())
        clock.advance(datetime.timedelta(minutes=1))
    window_opens = datetime.datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
    assert len(first_action) == 100
    for facts in devices:
        delay = device_delay(facts.seed, datetime.timedelta(minutes=30))
        # The first whole minute at or after the window's opening plus the delay.
        expected = window_opens + datetime.timedelta(minutes=-(-delay.total_seconds() // 60))
        assert first_action[facts.seed] == expected
    assert len(set(first_action.values())) > 20


def test_within_the_random_delay_says_so_and_names_the_time() -> None:
    cfg = config('policy = "stage"\n[download]\nwindow = "* 2-3 * * *"\nrandom_delay = "30m"\n')
    facts = next(
        f
        for f in (DeviceFacts(f"machine-id:{i}") for i in range(100))
        if device_delay(f.seed, datetime.timedelta(minutes=30)) > datetime.timedelta(minutes=10)
    )
    delay = device_delay(facts.seed, datetime.timedelta(minutes=30))
    decision = decide(cfg, clock_at(2026, 6, 1, 2, 0), NO_STATE, facts)
    assert decision.action is Action.IDLE
    assert decision.delay == delay
    assert "random delay" in decision.reason
    assert decision.next_opportunity is not None
    expected = datetime.datetime(2026, 6, 1, 2, 0, tzinfo=UTC) + delay
    assert utc(decision.next_opportunity) == expected
    # The device's window closes its delay after the configured one.
    closes = datetime.datetime(2026, 6, 1, 4, 0, tzinfo=UTC) + delay
    assert decide_at(cfg, closes - datetime.timedelta(seconds=1), facts) is Action.STAGE
    assert decide_at(cfg, closes, facts) is Action.IDLE


def decide_at(cfg: UpdatesConfig, when: datetime.datetime, facts: DeviceFacts) -> Action:
    return decide(cfg, FakeClock(when), NO_STATE, facts).action
