"""The agent on a directory device (docs/fleet.md): from enrollment through a
green OS update in a rollout, and a bad image the device rolls back from, which
pauses the next rollout; the device never reports the bad spec applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.agent.run import SYSROOT_BUSY, Agent, enroll
from atoll.agent.state import AgentState
from atoll.sysroot.layout import Sysroot
from helpers.busybox_root import REQUIRED, busybox_files
from helpers.cli import run_atoll
from helpers.fleet import FleetServer
from helpers.osimage import build_os_image
from helpers.registry import RegistryView

pytestmark = pytest.mark.integration


def atoll(*args: str) -> str:
    proc = run_atoll(*args)
    assert proc.returncode == 0, f"atoll {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def push_and_enroll(
    fleet_server: FleetServer,
    registry: RegistryView,
    images: Path,
    tags: list[str],
    tmp: Path,
    **template: Any,
) -> tuple[str, dict[str, str], Path, httpx.Client, AgentState]:
    """Push the layout's *tags*, install and boot the first on a directory device,
    put it in a fleet that names it (and *template*'s other settings) and enroll
    the device as d1."""
    repo = f"{registry.host}/{registry.new_repo('fleet')}"
    digests = {}
    for tag in tags:
        atoll("image", "copy", f"oci:{images}:{tag}", f"docker://{repo}:{tag}")
        inspected = atoll("--json", "image", "inspect", f"docker://{repo}:{tag}")
        digests[tag] = json.loads(inspected)["Digest"]
    sysroot = tmp / "sysroot"
    atoll("install", "to-filesystem", str(sysroot), "--source", f"docker://{repo}@{digests['1']}")
    atoll("boot", "--sysroot", str(sysroot))
    api = httpx.Client(
        base_url=f"{fleet_server.url}/api/v1",
        headers={"Authorization": f"Bearer {fleet_server.token}"},
        timeout=30,
    )
    template["os"] = {"image": f"{repo}@{digests['1']}"}
    api.put("fleets/edge", json={"selector": "", "template": template, "autoApprove": True})
    state = AgentState(tmp / "agent")
    enroll(state, fleet_server.url, api.post("enrollmenttokens", json={}).json()["token"], "d1", {})
    return repo, digests, sysroot, api, state


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_a_device_through_a_green_update_and_a_rolled_back_one(
    fleet_server: FleetServer, registry: RegistryView, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0", add=busybox_files({}))  # type: ignore[arg-type]
    build_os_image(images, "2", version="2.0", add=busybox_files({}))  # type: ignore[arg-type]
    bad = busybox_files({f"{REQUIRED}/50-broken.sh": "echo the app is broken\nexit 3\n"})
    build_os_image(images, "3", version="3.0", add=bad)  # type: ignore[arg-type]
    # Policy "apply": the agent reboots the device into a staged image itself.
    repo, digests, sysroot, api, state = push_and_enroll(
        fleet_server, registry, images, ["1", "2", "3"], tmp_path, updatePolicy={"policy": "apply"}
    )
    agent = Agent(state, root=tmp_path / "root", sysroot=sysroot)
    try:
        first = agent.step()
        assert (first.update, first.applied_version) == ("applied", 1)

        rollout = {
            "fleet": "edge",
            "os": {"image": f"{repo}@{digests['2']}"},
            "batches": [{"count": 1}],
        }
        assert api.put("rollouts/good", json=rollout).status_code == 201
        with Sysroot(sysroot).lock():  # another atoll operation holds the sysroot
            busy = agent.step(wait=5)
        assert (busy.update, busy.reason) == ("waiting", SYSROOT_BUSY)
        assert api.get("devices/d1").json()["status"]["update"]["state"] == "waiting"
        assert api.get("rollouts/good").json()["state"] == "running"
        # Staged, and booted by the agent through atoll updates run (the directory
        # device's reboot: its boot and health assessment), green: applied in one round.
        green = agent.step()
        assert (green.update, green.applied_version) == ("applied", 2)
        assert api.get("rollouts/good").json()["state"] == "done"
        assert api.get("devices/d1").json()["status"]["bootedDigest"] == digests["2"]

        # Policy "stage" from here on: the device reboots when someone reboots it.
        template = {"os": {"image": f"{repo}@{digests['2']}"}, "updatePolicy": {"policy": "stage"}}
        api.put("fleets/edge", json={"selector": "", "template": template, "autoApprove": True})
        assert agent.step(wait=5).applied_version == 3

        rollout["os"] = {"image": f"{repo}@{digests['3']}"}
        assert api.put("rollouts/bad", json=rollout).status_code == 201
        assert agent.step(wait=5).update == "staged"
        atoll("boot", "--sysroot", str(sysroot), "--max-boots", "5")  # red three times, back to 2
        failed = agent.step()
        assert (failed.update, failed.applied_version) == ("failed", 3)
        assert "rolled back from" in failed.reason
        paused = api.get("rollouts/bad").json()
        assert paused["state"] == "paused"
        assert "d1:" in paused["reason"]
        device = api.get("devices/d1").json()["status"]
        assert (device["bootedDigest"], device["appliedVersion"]) == (digests["2"], 3)
    finally:
        agent.close()
        api.close()


@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_an_image_without_a_kernel_is_staged_only_with_allow_no_kernel(
    fleet_server: FleetServer, registry: RegistryView, tmp_path: Path
) -> None:
    """A container-boot device's images carry no kernel (the demo's): ``atoll agent
    run --allow-no-kernel`` stages them, without it the update fails and says why."""
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0", add=busybox_files({}))  # type: ignore[arg-type]
    build_os_image(images, "2", version="2.0", add=busybox_files({}), kernel=False)  # type: ignore[arg-type]
    repo, digests, sysroot, api, state = push_and_enroll(
        fleet_server, registry, images, ["1", "2"], tmp_path
    )
    strict = Agent(state, root=tmp_path / "root", sysroot=sysroot)
    try:
        assert strict.step().update == "applied"
        rollout = {
            "fleet": "edge",
            "os": {"image": f"{repo}@{digests['2']}"},
            "batches": [{"count": 1}],
        }
        assert api.put("rollouts/r", json=rollout).status_code == 201
        refused = strict.step(wait=5)
        assert refused.update == "failed" and "pass --allow-no-kernel" in refused.reason, refused
    finally:
        strict.close()
    lenient = Agent(state, root=tmp_path / "root", sysroot=sysroot, allow_no_kernel=True)
    try:
        staged = lenient.step(wait=5)
        assert (staged.update, staged.applied_version) == ("staged", 1), staged
        status = api.get("devices/d1").json()["status"]
        assert status["stagedDigest"] == digests["2"]
    finally:
        lenient.close()
        api.close()
