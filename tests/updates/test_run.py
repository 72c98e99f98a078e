"""run_automatic_update: which device operations each policy calls, the state it
keeps, inhibitors, failures, the rate limit, waiting; and one real directory device."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from atoll.errors import LockedError, NetworkError, NotFoundError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.sysroot.lifecycle import Device
from atoll.updates.clock import FakeClock
from atoll.updates.policy import Action
from atoll.updates.runner import Outcome, device_seed, run_automatic_update
from atoll.updates.state import UpdateState, state_path, updates_lock
from helpers.osimage import build_os_image
from helpers.updates import NEW_DIGEST, FakeDevice, RebootRecorder, deployment, write_config

UTC = datetime.UTC
T = datetime.datetime(2026, 6, 1, 2, 30, tzinfo=UTC)  # a Monday


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def device(tmp_path: Path) -> FakeDevice:
    return FakeDevice(tmp_path / "sysroot")


def state_of(device: FakeDevice) -> UpdateState:
    return UpdateState.load(state_path(device.sysroot.root))


def go(
    device: FakeDevice,
    root: Path,
    clock: FakeClock | None = None,
    reboot: RebootRecorder | None = None,
    **kwargs: object,
) -> tuple[object, RebootRecorder]:
    recorder = reboot or RebootRecorder()
    result = run_automatic_update(
        device,  # type: ignore[arg-type]
        root,
        clock or FakeClock(T),
        reboot=recorder,
        **kwargs,  # type: ignore[arg-type]
    )
    return result, recorder


# --- what each policy calls -------------------------------------------------------------------


def test_policy_none_calls_nothing_and_writes_nothing(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "none"\n')
    result, reboot = go(device, root)
    assert result.outcome is Outcome.IDLE  # type: ignore[attr-defined]
    assert device.calls == [] and reboot.count == 0
    assert not state_path(device.sysroot.root).exists()


def test_no_config_file_is_policy_none(device: FakeDevice, root: Path) -> None:
    result, _ = go(device, root)
    assert result.outcome is Outcome.IDLE  # type: ignore[attr-defined]
    assert device.calls == []


def test_policy_check_checks_and_remembers(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "check"\n')
    result, reboot = go(device, root)
    assert device.calls == ["check"] and reboot.count == 0
    assert result.outcome is Outcome.CHECKED  # type: ignore[attr-defined]
    assert result.update_available is True  # type: ignore[attr-defined]
    check = state_of(device).last_check
    assert check is not None
    assert (check.time, check.available, check.digest, check.version) == (
        T,
        True,
        NEW_DIGEST,
        "2.0",
    )
    device.available = False
    result, _ = go(device, root)
    assert result.update_available is False  # type: ignore[attr-defined]
    check = state_of(device).last_check
    assert check is not None and not check.available and check.digest is None


def test_policy_check_outside_its_window_does_nothing(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "check"\n[download]\nwindow = "* 4 * * *"\n')
    result, _ = go(device, root)
    assert device.calls == []
    decision = result.decision  # type: ignore[attr-defined]
    assert decision.action is Action.IDLE
    assert decision.next_opportunity == datetime.datetime(2026, 6, 1, 4, 0, tzinfo=UTC)


def test_policy_stage_stages_and_never_reboots(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "stage"\n')
    result, reboot = go(device, root)
    assert device.calls == ["stage"] and reboot.count == 0
    assert result.outcome is Outcome.STAGED  # type: ignore[attr-defined]
    assert result.deployment == device.staged.id  # type: ignore[attr-defined]
    state = state_of(device)
    assert state.staged_at == T and state.staged_digest == NEW_DIGEST
    assert state.last_action == "staged"
    # Again an hour later: already staged, the staging time stays.
    later = FakeClock(T + datetime.timedelta(hours=1))
    result, _ = go(device, root, later)
    assert device.calls == ["stage", "stage"]
    assert result.outcome is Outcome.STAGED  # type: ignore[attr-defined]
    assert state_of(device).staged_at == T


def test_policy_stage_with_nothing_new(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "stage"\n')
    device.available = False
    result, _ = go(device, root)
    assert device.calls == ["stage"]
    assert result.outcome is Outcome.UP_TO_DATE  # type: ignore[attr-defined]
    assert state_of(device).staged_at is None


def test_policy_apply_stages_finalizes_and_reboots(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "apply"\n')

    def state_is_saved_before_the_reboot() -> None:
        assert device.calls == ["stage", "finalize"]
        assert state_of(device).applied_at == T

    result, reboot = go(device, root, reboot=RebootRecorder(state_is_saved_before_the_reboot))
    assert reboot.count == 1
    assert result.outcome is Outcome.APPLIED and result.rebooted  # type: ignore[attr-defined]
    assert device.current.origin.manifest_digest == NEW_DIGEST


def test_policy_apply_with_nothing_new_does_not_reboot(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "apply"\n')
    device.available = False
    result, reboot = go(device, root)
    assert device.calls == ["stage"] and reboot.count == 0
    assert result.outcome is Outcome.UP_TO_DATE  # type: ignore[attr-defined]


def test_policy_apply_waits_for_its_window(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "apply"\n[apply]\nwindow = "* 3 * * *"\n')
    result, reboot = go(device, root)
    assert device.calls == ["stage"] and reboot.count == 0
    assert result.outcome is Outcome.STAGED  # type: ignore[attr-defined]
    result, reboot = go(device, root, FakeClock(T + datetime.timedelta(minutes=45)))
    assert device.calls == ["stage", "stage", "finalize"] and reboot.count == 1


def test_staged_update_applies_outside_the_download_window_without_fetching(
    device: FakeDevice, root: Path
) -> None:
    write_config(root, 'policy = "apply"\n[download]\nwindow = "* 1 * * *"\n')
    device.staged = deployment(NEW_DIGEST, "2.0")
    _, reboot = go(device, root)
    assert device.calls == ["finalize"] and reboot.count == 1


def test_download_only_update_is_not_touched(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "apply"\n')
    device.staged = deployment(NEW_DIGEST, "2.0", download_only=True)
    result, reboot = go(device, root)
    assert device.calls == [] and reboot.count == 0
    assert result.outcome is Outcome.IDLE  # type: ignore[attr-defined]


# --- inhibitors -------------------------------------------------------------------------------


def test_inhibitor_file_holds_the_reboot(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "apply"\n[inhibitors]\nfiles = ["/run/atoll/inhibit-reboot"]\n')
    flag = root / "run" / "atoll" / "inhibit-reboot"
    flag.parent.mkdir(parents=True)
    flag.touch()
    result, reboot = go(device, root)
    assert device.calls == ["stage"] and reboot.count == 0  # staged, not applied
    result, reboot = go(device, root)
    assert device.calls == ["stage"] and reboot.count == 0  # staged: only waits
    assert result.outcome is Outcome.INHIBITED  # type: ignore[attr-defined]
    assert "/run/atoll/inhibit-reboot (exists)" in result.message  # type: ignore[attr-defined]
    assert state_of(device).last_action == "inhibited"
    flag.unlink()
    result, reboot = go(device, root)
    assert device.calls == ["stage", "stage", "finalize"] and reboot.count == 1


def test_force_reboots_through_an_inhibitor(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "apply"\n[inhibitors]\ncommands = ["/usr/bin/app-ready"]\n')
    asked: list[Sequence[str]] = []

    def busy(argv: Sequence[str]) -> tuple[int, str]:
        asked.append(argv)
        return 1, "busy"

    result, reboot = go(device, root, run_command=busy)
    assert reboot.count == 0 and asked
    asked.clear()
    result, reboot = go(device, root, force=True, run_command=busy)
    assert reboot.count == 1 and asked == []
    assert result.outcome is Outcome.APPLIED  # type: ignore[attr-defined]


def test_inhibitor_that_appears_while_staging_holds_the_reboot(
    device: FakeDevice, root: Path
) -> None:
    write_config(root, 'policy = "apply"\n[inhibitors]\ncommands = ["/usr/bin/app-ready"]\n')
    answers = iter([(0, ""), (1, "job started")])
    result, reboot = go(device, root, run_command=lambda argv: next(answers))
    assert device.calls == ["stage"] and reboot.count == 0
    assert result.outcome is Outcome.INHIBITED  # type: ignore[attr-defined]
    assert "exited with 1: job started" in result.message  # type: ignore[attr-defined]


# --- failures, locking, rate limit, waiting ---------------------------------------------------


def test_failure_is_recorded_raised_and_backed_off(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "stage"\n')
    device.fail_with = NetworkError("registry.example: connection refused")
    with pytest.raises(NetworkError):
        go(device, root)
    state = state_of(device)
    assert state.failures == 1 and state.last_action == "stage"
    assert state.last_error is not None and state.last_error.exit_code == 22
    assert state.last_error.message == "registry.example: connection refused"
    # Ten minutes later the backoff (15 minutes) holds.
    result, _ = go(device, root, FakeClock(T + datetime.timedelta(minutes=10)))
    assert device.calls == ["stage"]
    assert result.outcome is Outcome.IDLE  # type: ignore[attr-defined]
    # After it, the next attempt succeeds and clears the error.
    device.fail_with = None
    go(device, root, FakeClock(T + datetime.timedelta(minutes=15)))
    assert device.calls == ["stage", "stage"]
    state = state_of(device)
    assert state.failures == 0 and state.last_error is None


def test_one_run_at_a_time(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "stage"\n')
    with updates_lock(device.sysroot.root), pytest.raises(LockedError):
        go(device, root)
    assert device.calls == []


def test_rate_limit_applies_while_fetching_only(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "stage"\n[download]\nrate_limit = "2MiB/s"\n')
    go(device, root)
    assert [c.rate_limit for c in device.ctx_during] == [2 * 1024 * 1024]
    assert device.ctx.rate_limit is None  # the device's own context is back


def test_rate_limit_takes_the_lower_of_config_and_context(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "check"\n[download]\nrate_limit = "2MiB/s"\n')
    device.ctx = SystemContext(rate_limit=4096)
    go(device, root)
    assert device.ctx_during[0].rate_limit == 4096


def test_max_wait_sleeps_until_the_window_opens(device: FakeDevice, root: Path) -> None:
    write_config(root, 'policy = "stage"\n[download]\nwindow = "* 3 * * *"\n')
    clock = FakeClock(T)
    go(device, root, clock, max_wait=datetime.timedelta(minutes=20))
    assert device.calls == [] and clock.sleeps == []  # 03:00 is 30 minutes away
    go(device, root, clock, max_wait=datetime.timedelta(minutes=45))
    assert clock.sleeps == [30 * 60]
    assert device.calls == ["stage"]
    assert state_of(device).staged_at == datetime.datetime(2026, 6, 1, 3, 0, tzinfo=UTC)


def test_device_seed_prefers_the_machine_id(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    assert device_seed(root, tmp_path / "sysroot") == f"sysroot:{tmp_path / 'sysroot'}"
    (root / "etc" / "machine-id").write_text("uninitialized\n")
    assert device_seed(root, tmp_path / "sysroot").startswith("sysroot:")
    (root / "etc" / "machine-id").write_text("0123abcd\n")
    assert device_seed(root, tmp_path / "sysroot") == "machine-id:0123abcd"


# --- a real directory device ------------------------------------------------------------------


def booted_version(device: Device) -> str | None:
    state = device.state()
    assert state.booted is not None
    return state.booted.origin.image_version


def test_apply_policy_on_a_directory_device(tmp_path: Path) -> None:
    images = tmp_path / "images"
    build_os_image(images, "stable", version="1.0")
    sysroot = tmp_path / "sysroot"
    device = Device(sysroot)
    device.install(ImageName.parse(f"oci:{images}:stable"))
    device.boot()
    state = device.state()
    root = state.path(state.current)
    write_config(root, 'policy = "apply"\n[apply]\nwindow = "* 3 * * *"\n')

    # No new image: nothing to do.
    result = run_automatic_update(device, root, FakeClock(T), reboot=device.boot)
    assert result.outcome is Outcome.UP_TO_DATE
    # Version 2 is published; before 03:00 it is staged, not applied.
    build_os_image(images, "stable", version="2.0")
    result = run_automatic_update(device, root, FakeClock(T), reboot=device.boot)
    assert result.outcome is Outcome.STAGED
    assert booted_version(device) == "1.0"
    assert device.state().staged is not None
    # At 03:00 it is applied: the device reboots into 2.0.
    at_three = FakeClock(T + datetime.timedelta(minutes=30))
    result = run_automatic_update(device, root, at_three, reboot=device.boot)
    assert result.outcome is Outcome.APPLIED
    assert booted_version(device) == "2.0"
    assert device.state().staged is None
    doc = json.loads(state_path(sysroot).read_text())
    assert doc["appliedAt"] == "2026-06-01T03:00:00Z"
    assert doc["lastAction"] == "applied"
    # The configuration is a local change to /etc: the new deployment keeps it.
    new_root = device.state().path(device.state().current)
    assert new_root != root
    assert (new_root / "etc/atoll/updates.toml").read_text() == (
        root / "etc/atoll/updates.toml"
    ).read_text()


def test_not_a_sysroot_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_config(root, 'policy = "stage"\n')
    device = Device(tmp_path / "typo")
    with pytest.raises(NotFoundError, match="not an atoll sysroot"):
        run_automatic_update(device, root, FakeClock(T), reboot=RebootRecorder())
    assert not (tmp_path / "typo").exists()
