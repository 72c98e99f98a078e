"""An OS image the device rolled back from is not staged again by itself
(atoll.sysroot.rolledback): automatic updates under ``policy = "apply"`` end
after one rollback instead of looping through red boots; upgrade, switch and
the status commands say why; --allow-rolled-back and ``updates forget``
override; a newer digest on the same tag is taken.  A real directory device
(checks run in a chroot of busybox images)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atoll.health.assess import assess_boot
from atoll.health.records import read_rollbacks
from atoll.oci.transports import ImageName
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.rolledback import read_rolled_back
from atoll.updates.clock import FakeClock
from atoll.updates.runner import Outcome, run_automatic_update
from helpers.busybox_root import REQUIRED, busybox_files, missing
from helpers.cli import run_atoll
from helpers.osimage import build_os_image
from helpers.updates import write_config

T = datetime.datetime(2026, 6, 1, 2, 30, tzinfo=datetime.UTC)
RED = {f"{REQUIRED}/50-broken.sh": 'echo "broken on purpose" >&2\nexit 3\n'}
GREEN = {f"{REQUIRED}/50-fine.sh": "exit 0\n"}


@pytest.fixture(autouse=True)
def needs_chroot() -> None:
    if os.geteuid() != 0:
        missing("running checks in a chroot needs root")


def publish(images: Path, version: str, checks: dict[str, str]) -> str:
    return build_os_image(images, "stable", version=version, add=busybox_files(checks))


def boot_and_assess(device: Device) -> bool:
    device.boot()
    return assess_boot(device, inside=False).green


def booted_version(device: Device) -> str | None:
    booted = device.state().booted
    assert booted is not None
    return booted.origin.image_version


def rolled_back_device(tmp_path: Path) -> tuple[Device, Path, str]:
    """A device that booted 1.0, took 2.0 (red), and fell back to 1.0."""
    images = tmp_path / "images"
    publish(images, "1.0", GREEN)
    device = Device(tmp_path / "sysroot")
    device.install(ImageName.parse(f"oci:{images}:stable"))
    assert boot_and_assess(device)
    red = publish(images, "2.0", RED)
    device.stage()
    device.finalize()
    for _ in range(4):  # three red boots, then the fallback
        if boot_and_assess(device):
            break
    assert booted_version(device) == "1.0"
    return device, images, red


def test_apply_policy_ends_after_one_rollback(tmp_path: Path) -> None:
    images = tmp_path / "images"
    publish(images, "1.0", GREEN)
    device = Device(tmp_path / "sysroot")
    device.install(ImageName.parse(f"oci:{images}:stable"))
    assert boot_and_assess(device)
    state = device.state()
    root = state.path(state.current)
    write_config(root, 'policy = "apply"\n')
    red = publish(images, "2.0", RED)
    reboots: list[bool] = []

    def reboot() -> None:
        reboots.append(boot_and_assess(device))

    def run() -> Any:
        # The configuration is a local change to /etc: every deployment keeps it.
        return run_automatic_update(device, root, FakeClock(T), reboot=reboot, force=True)

    assert run().outcome is Outcome.APPLIED
    assert reboots == [False]
    while not boot_and_assess(device):  # what the bootloader does after a red boot
        pass
    assert booted_version(device) == "1.0"
    assert len(read_rollbacks(device.sysroot.root)) == 1
    [record] = read_rolled_back(device.sysroot)
    assert record.image_digest == red
    assert record.version == "2.0"
    assert record.attempts_used == 3
    assert "50-broken.sh" in record.reason

    for _ in range(3):  # the timer fires again and again: 2.0 is never taken again
        result = run()
        assert result.outcome is Outcome.SKIPPED
        assert result.rolled_back == record
        assert result.to_json()["rolledBack"]["imageDigest"] == red
        assert "rolled back" in result.message and "50-broken.sh" in result.message
    assert reboots == [False]
    assert device.state().staged is None
    assert len(read_rollbacks(device.sysroot.root)) == 1

    # A newer digest on the same tag is taken as usual.
    publish(images, "3.0", GREEN)
    assert run().outcome is Outcome.APPLIED
    assert booted_version(device) == "3.0"
    assert reboots == [False, True]


def test_stage_policy_and_check_policy_skip_it(tmp_path: Path) -> None:
    device, _, red = rolled_back_device(tmp_path)
    state = device.state()
    root = state.path(state.current)
    for policy, outcome in (("stage", Outcome.SKIPPED), ("check", Outcome.CHECKED)):
        write_config(root, f'policy = "{policy}"\n')
        result = run_automatic_update(device, root, FakeClock(T), reboot=list, force=True)
        assert result.outcome is outcome
        assert result.update_available is False
        assert result.rolled_back is not None and result.rolled_back.image_digest == red
        assert device.state().staged is None
    result = run_automatic_update(
        device, root, FakeClock(T), reboot=list, force=True, allow_rolled_back=True
    )
    assert result.update_available is True


def atoll(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_atoll(*args)
    assert proc.returncode == 0, f"atoll {' '.join(args)}: {proc.stderr}"
    return proc


def test_commands_say_so_and_the_overrides_take_it(tmp_path: Path) -> None:
    device, images, red = rolled_back_device(tmp_path)
    s = ("--sysroot", str(device.sysroot.root))
    short = red[:19]

    check = atoll("upgrade", *s, "--check")
    assert "No update taken" in check.stdout and short in check.stdout
    assert "50-broken.sh" in check.stdout and "--allow-rolled-back" in check.stdout
    data = json.loads(atoll("upgrade", *s, "--check", "--json").stdout)
    assert data["changed"] is False
    assert data["rolledBack"]["imageDigest"] == red
    assert data["rolledBack"]["version"] == "2.0"

    for command in (("upgrade",), ("switch", f"oci:{images}:stable")):
        human = atoll(*command, *s).stdout
        assert "not staged" in human and "rolled back" in human and short in human
        doc = json.loads(atoll(*command, *s, "--json").stdout)
        assert doc["changed"] is False and doc["deployment"] is None
        assert doc["rolledBack"]["imageDigest"] == red
        assert device.state().staged is None

    state = device.state()
    write_config(state.path(state.current), 'policy = "stage"\n')
    run = json.loads(atoll("updates", "run", *s, "--force", "--json").stdout)
    assert run["outcome"] == "skipped" and run["updateAvailable"] is False
    assert run["rolledBack"]["imageDigest"] == red
    human = atoll("updates", "run", *s, "--force").stdout
    assert human.startswith("skipped: not staged:") and short in human
    assert device.state().staged is None

    status = json.loads(atoll("updates", "status", *s, "--json").stdout)
    assert [r["imageDigest"] for r in status["rolledBack"]] == [red]
    human = atoll("updates", "status", *s).stdout
    assert "Rolled back:" in human and short in human and "updates forget" in human
    host = json.loads(atoll("status", *s, "--format", "json").stdout)
    [image] = host["status"]["atoll"]["rolledBackImages"]
    assert image["imageDigest"] == red and image["attemptsUsed"] == 3
    assert short in atoll("status", *s).stdout

    # --allow-rolled-back takes it.
    args = ("--check", "--allow-rolled-back", "--json")
    assert json.loads(atoll("upgrade", *s, *args).stdout)["changed"] is True
    doc = json.loads(atoll("switch", *s, f"oci:{images}:stable", *args[1:]).stdout)
    assert doc["changed"] is True and doc["imageDigest"] == red
    assert device.state().staged is not None

    # So does forgetting it (here by a prefix of its digest).
    forgot = json.loads(atoll("updates", "forget", *s, red[7:19], "--json").stdout)
    assert forgot["forgotten"]["imageDigest"] == red
    assert read_rolled_back(device.sysroot) == []
    assert json.loads(atoll("updates", "status", *s, "--json").stdout)["rolledBack"] == []
    missing_digest = run_atoll("updates", "forget", *s, red)
    assert missing_digest.returncode == 12, missing_digest.stderr


def test_a_green_boot_of_the_image_forgets_it(tmp_path: Path) -> None:
    device, _, red = rolled_back_device(tmp_path)
    # The same digest, fixed by a local change the image did not have.
    result = device.stage(allow_rolled_back=True)
    assert result.deployment is not None
    staged_root = device.state().path(result.deployment)
    check = staged_root / REQUIRED / "50-broken.sh"
    check.unlink()  # a hard link into the store: never write through it
    check.write_text("#!/bin/sh\nexit 0\n")
    check.chmod(0o755)
    device.finalize()
    assert boot_and_assess(device)
    assert booted_version(device) == "2.0"
    booted = device.state().booted
    assert booted is not None and booted.origin.manifest_digest == red
    assert read_rolled_back(device.sysroot) == []
