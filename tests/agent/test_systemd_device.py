"""The agent as a systemd service on a container-boot device (docs/fleet.md).

A sysroot installed from an OS image of Debian trixie (the demo's tree: systemd,
podman, python3-httpx and python3-cryptography) with atoll and
``atoll-agent.service`` in it is booted by ``atoll device boot --containers``
(systemd-nspawn, systemd as PID 1, the host's network).  Inside it, ``atoll
agent enroll`` joins a fleet server on the host's loopback; systemd starts the
agent, which takes the fleet's Quadlet unit up through systemd (daemon-reload,
podman's generator, a restart of the service), stages the OS image of a
rollout; after a reboot into it the agent, started again by systemd, reports it
booted green and applied, and the rollout is done.  A changed unit is restarted
through systemd again, now on the new OS.  Last, a rollout to an image whose
required health check fails: the device stages it, boots it red twice (its
greenboot.conf allows two attempts; ``FailureAction=reboot`` of the health
check, the harness's next round), falls back; the agent reports the rollback
and never the bad spec applied, and the rollout pauses at its error threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.demo import basetree
from atoll.device.harness import machine_name
from atoll.device.nspawn import child_pids
from atoll.units import (
    AGENT_SERVICE,
    FINALIZE_PATH,
    FINALIZE_SERVICE,
    install_atoll,
    install_units,
    unit_text,
)
from helpers.busybox_root import REQUIRED
from helpers.cli import run_atoll
from helpers.debian import DebianTree, build_debian_image, ensure_debian_tree
from helpers.fleet import FleetServer, operator
from helpers.lan import _nspawn_pids
from helpers.osimage import FileSpec, tree_spec
from helpers.parts import missing, require_tool
from helpers.podman5 import CONTAINERS_CONF
from helpers.registry import RegistryView
from helpers.workloads import free_port, http_get, push_workload_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICE_ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
UNITS = ("atoll-healthcheck.service", FINALIZE_SERVICE, FINALIZE_PATH, AGENT_SERVICE)


@pytest.fixture(scope="module")
def device_tree() -> DebianTree:
    """The demo's trixie tree (podman and what the agent imports), in the tests' cache."""
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")):
        require_tool(tool, package)
    require_tool("debootstrap")
    if os.geteuid() != 0:
        missing("booting a container with systemd-nspawn needs root")
    return ensure_debian_tree(recipe=basetree.demo_recipe())


def atoll(*args: str) -> str:
    proc = run_atoll(*args)
    assert proc.returncode == 0, f"atoll {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def digest_of(reference: str) -> str:
    return str(json.loads(atoll("--json", "image", "inspect", f"docker://{reference}"))["Digest"])


class BootedDevice:
    """``atoll device boot --keep-running`` of a sysroot, and commands inside it."""

    def __init__(self, sysroot: Path, console: Path) -> None:
        self.sysroot = sysroot
        self.console = console
        self.machine = machine_name(sysroot)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atoll", "device", "boot", "--sysroot", str(sysroot),
             "--keep-running", "--network", "host", "--containers", "--timeout", "900",
             "--max-boots", "5", "--console-log", str(console)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

    def tail(self) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-60:])
        except FileNotFoundError:
            return "(no console log)"

    def leader(self) -> int | None:
        for pid in _nspawn_pids(self.machine):
            children = child_pids(pid)
            if children:
                return children[0]
        return None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        pid = self.leader()
        assert pid is not None, f"the device is not running:\n{self.tail()}"
        proc = subprocess.run(
            ["nsenter", f"--target={pid}", "--all", "--", *DEVICE_ENV, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert not check or proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        return proc

    def stop(self) -> None:
        """The end of the test: the harness interrupted, the container killed
        (its orderly shutdown takes half a minute and proves nothing here)."""
        if self.proc.poll() is None:
            leader = self.leader()
            os.killpg(self.proc.pid, signal.SIGINT)
            if leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def wait_for(what: str, check: Callable[[], Any], device: BootedDevice, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if device.proc.poll() is not None:
            pytest.fail(f"the device stopped while waiting for {what}:\n{device.tail()}")
        time.sleep(1)
    journal = device.run("journalctl", "-u", AGENT_SERVICE, "-n", "40", "--no-pager", check=False)
    pytest.fail(f"no {what} in {timeout} s\nagent: {journal.stdout}\nconsole:\n{device.tail()}")


@pytest.fixture
def booted(tmp_path: Path) -> Iterator[list[BootedDevice]]:
    devices: list[BootedDevice] = []
    yield devices
    for device in devices:
        device.stop()


def image_spec(stage: Path, registry: str) -> dict[str, Any]:
    install_atoll(stage)
    install_units(stage, UNITS)
    # The shipped command with a 5 s long poll, not 30 s: after a reboot the agent's
    # first poll waits that long for a change before it reports the boot.
    (exec_start,) = [x for x in unit_text(AGENT_SERVICE).splitlines() if x.startswith("ExecStart=")]
    drop_in = stage / f"etc/systemd/system/{AGENT_SERVICE}.d/10-wait.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(f"[Service]\nExecStart=\n{exec_start} --wait 5s\n")
    spec: dict[str, Any] = dict(tree_spec(stage))
    # podman and atoll inside reach the tests' registry on the host's loopback.
    conf = f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n'
    spec["etc/containers/registries.conf"] = FileSpec(conf.encode())
    spec["etc/containers/containers.conf"] = FileSpec(CONTAINERS_CONF.encode())
    return spec


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
def test_the_agent_service_takes_a_rollout_and_restarts_units_through_systemd(
    device_tree: DebianTree,
    fleet_server: FleetServer,
    registry: RegistryView,
    tmp_path: Path,
    booted: list[BootedDevice],
) -> None:
    host = registry.server.host
    spec = image_spec(tmp_path / "stage", host)
    images = tmp_path / "images"
    repo = f"{host}/{registry.new_repo('fleet-os')}"
    broken = FileSpec(b"#!/bin/sh\necho the app is broken\nexit 3\n", 0o755)
    # Two attempts, not greenboot's three: one red boot less.
    tries = FileSpec(b"GREENBOOT_MAX_BOOT_ATTEMPTS=2\n")
    bad = {f"{REQUIRED}/50-broken.sh": broken, "etc/greenboot/greenboot.conf": tries}
    adds = {"1": spec, "2": spec, "3": {**spec, **bad}}
    digests = {}
    for version, add in adds.items():
        build_debian_image(
            images, version, device_tree, version=f"{version}.0", add=add, kernel=True
        )  # type: ignore[arg-type]
        atoll("image", "copy", f"oci:{images}:{version}", f"docker://{repo}:{version}")
        digests[version] = digest_of(f"{repo}:{version}")
    web_repo = registry.new_repo("fleet-web")
    port = free_port()
    web = {
        v: f"{host}/{web_repo}@" + digest_of(
            push_workload_image(registry, web_repo, v, page=f"web {v}\n")
        )
        for v in ("v1", "v2")
    }  # fmt: skip

    def unit(version: str) -> str:
        return (
            f"[Container]\nImage={web[version]}\nNetwork=host\nEnvironment=PORT={port}\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )

    sysroot = tmp_path / "sysroot"
    atoll("install", "to-filesystem", str(sysroot), "--source", f"docker://{repo}@{digests['1']}")

    api = operator(fleet_server)
    template = {"os": {"image": f"{repo}@{digests['1']}"}, "units": {"web.container": unit("v1")}}
    fleet = {"selector": "", "template": template, "autoApprove": True}
    assert api.put("fleets/edge", json=fleet).status_code == 200
    token = api.post("enrollmenttokens", json={}).json()["token"]

    def status() -> dict[str, Any]:
        found: dict[str, Any] = api.get("devices/dev1").json().get("status") or {}
        return found

    def serves(page: str) -> bool:
        try:
            return http_get(port, timeout=2.0) == page
        except OSError:
            return False

    device = BootedDevice(sysroot, tmp_path / "console.log")
    booted.append(device)
    try:
        last = sysroot / "atoll/health/last.json"
        wait_for(
            "a green first boot",
            lambda: last.exists() and json.loads(last.read_text())["outcome"] == "green",
            device,
            300,
        )
        # Enrolled inside the device; systemd starts the agent from then on.
        enrolled = device.run(
            "atoll", "agent", "enroll", "--server", fleet_server.url, "--token", token,
            "--name", "dev1",
        )  # fmt: skip
        assert "enrollment approved" in enrolled.stdout
        device.run("systemctl", "start", AGENT_SERVICE)

        # The fleet's unit: written, systemd reloaded, its service restarted.
        first = wait_for(
            "the first spec applied",
            lambda: (s := status()).get("appliedVersion") == 1 and s,
            device,
            300,
        )
        assert first["workloads"] == {"web.container": "restarted"}
        assert first["bootedDigest"] == digests["1"] and first["health"] == "green"
        wait_for("web v1 to serve", lambda: serves("web v1\n"), device, 180)
        show = ("systemctl", "show", "-P", "ActiveState,FragmentPath", "web.service")
        assert device.run(*show).stdout.split() == ["active", "/run/systemd/generator/web.service"]

        # A rollout: the agent stages the image; the device boots it at its next reboot.
        target = {"image": f"{repo}@{digests['2']}"}
        rollout = {"fleet": "edge", "os": target, "batches": [{"count": 1}]}
        assert api.put("rollouts/r1", json=rollout).status_code == 201
        wait_for(
            "the image staged", lambda: status().get("stagedDigest") == digests["2"], device, 600
        )
        assert status()["update"]["state"] == "staged"
        assert api.get("rollouts/r1").json()["state"] == "running"
        device.run("systemctl", "reboot", check=False)
        done = wait_for(
            "the rollout done",
            lambda: api.get("rollouts/r1").json()["state"] == "done" and status(),
            device,
            600,
        )
        assert (done["bootedDigest"], done["health"]) == (digests["2"], "green")
        assert done["appliedVersion"] == 2 and done["update"]["state"] == "applied"
        # systemd started the agent again at boot: no ordering cycle dropped its job.
        assert "ordering cycle" not in device.run("journalctl", "-b", "--no-pager").stdout
        # The unit came along in /etc: systemd started it at boot ([Install]).
        wait_for("web v1 to serve after the reboot", lambda: serves("web v1\n"), device, 180)

        # A changed unit: the service restarts with the new image, through systemd.
        started = device.run("systemctl", "show", "-P", "ExecMainStartTimestampMonotonic",
                             "web.service").stdout.strip()  # fmt: skip
        template = {"os": target, "units": {"web.container": unit("v2")}}
        assert api.put("fleets/edge", json={**fleet, "template": template}).status_code == 200
        changed = wait_for(
            "the changed unit applied",
            lambda: (s := status()).get("appliedVersion", 0) > 2 and s,
            device,
            300,
        )
        assert changed["workloads"] == {"web.container": "restarted"}
        wait_for("web v2 to serve", lambda: serves("web v2\n"), device, 180)
        now = device.run("systemctl", "show", "-P", "ExecMainStartTimestampMonotonic",
                         "web.service").stdout.strip()  # fmt: skip
        assert int(now) > int(started)

        # A bad image (its required check fails): staged, two red boots, back to 2.
        before = changed["appliedVersion"]
        seen: list[dict[str, Any]] = []

        def watched() -> dict[str, Any]:
            seen.append(status())
            return seen[-1]

        rollout_bad = {**rollout, "os": {"image": f"{repo}@{digests['3']}"}}
        assert api.put("rollouts/r2", json=rollout_bad).status_code == 201
        wait_for(
            "the bad image staged",
            lambda: watched().get("stagedDigest") == digests["3"],
            device,
            600,
        )
        device.run("systemctl", "reboot", check=False)
        back = wait_for(
            "the rollback reported",
            lambda: (
                (s := watched())["update"]["state"] == "failed"
                and s["bootedDigest"] == digests["2"]
                and s
            ),
            device,
            600,
        )
        assert back["update"]["reason"] == f"the device rolled back from {digests['3'][:19]}"
        assert (back["health"], back["rollbackDigest"]) == ("green", digests["3"])
        reason = json.loads(back["healthReason"])
        assert (reason["name"], reason["exitCode"], reason["output"]) == (
            "50-broken.sh",
            3,
            "the app is broken",
        )
        inside = json.loads(device.run("atoll", "status", "--json", "--sysroot", "/sysroot").stdout)
        assert inside["status"]["atoll"]["lastRollback"]["attemptsUsed"] == 2

        # No status the server held at any poll (each second) has the bad spec applied:
        # the device stays one version behind.
        assert {s.get("appliedVersion") for s in seen} == {before}
        assert api.get("devices/dev1").json()["specVersion"] > before
        paused = api.get("rollouts/r2").json()
        assert paused["state"] == "paused", paused
        # The rollback's report, or a red boot's if the agent reported one before its reboot.
        assert paused["reason"].startswith(
            "batch 0: error threshold: 1 of 1 devices failed (dev1: "
        ), paused["reason"]
        assert [d["state"] for d in paused["batches"][0]["devices"]] == ["failed"]
    finally:
        api.close()
