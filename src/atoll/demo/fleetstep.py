"""The demo's fleet chapter (step 7): the devices' OS moved by a fleet server.

The host runs ``atoll fleet serve`` on its loopback with SQLite, bridged into
each device's loopback as the registry is (:mod:`atoll.demo.bridge`).  Each
device enrolls itself and runs the agent as the systemd unit atoll ships.  The
operator rolls the OS out in two batches (dev1, then dev2): the agent on a
device stages the fleet's image, the device's own update unit (policy
``apply``, which the fleet's template sets) finalizes it and reboots.  The bad
v2 boots red on dev1, falls back, and the rollout pauses at its error
threshold before dev2 takes it; v3 goes out in two batches and both boot green.

The host only serves the fleet and asks the server what happened; it never
upgrades a device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from atoll.demo import osimage
from atoll.demo.framework import Done
from atoll.demo.registry import free_port
from atoll.demo.story import (
    DEVICE_NAMES,
    OS_PROD,
    Story,
    atoll_argv,
    atoll_argv_module,
    store_usage,
)
from atoll.errors import DemoStepError

FLEET = "edge"
#: Where the agent's unit file is in the device's image (atoll's own copy).
AGENT_UNIT = "/usr/lib/python3/dist-packages/atoll/units/files/atoll-agent.service"


class FleetChapter:
    def __init__(self, story: Story) -> None:
        self.story = story
        self.demo = story.demo
        self.port = 0
        self.env: dict[str, str] = {}

    @property
    def directory(self) -> Path:
        return self.demo.workdir / "fleet"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def atoll(self, *args: str, quiet: bool = False, check: bool = True) -> Done:
        """An operator's ``atoll fleet ARGS`` against the demo's server."""
        return self.demo.atoll("fleet", *args, env=self.env, quiet=quiet, check=check)

    def image(self, version: str) -> str:
        return f"{self.story.registry}/{OS_PROD}@{self.story.digests[version]}"

    # --- the chapter ----------------------------------------------------------------

    def step(self) -> str:
        s, d = self.story, self.demo
        d.section(
            "7",
            "A fleet: the server, two devices enrolled, OS rollouts in batches",
            "atoll fleet serve runs on the host with SQLite, reachable from the LAN as the "
            "registry is. Each device enrolls and runs the agent as a systemd unit. A rollout "
            "of v2 goes out in two batches (dev1, then dev2): dev1's agent stages it, its "
            "update unit reboots into it, its required check fails in both of the two boots "
            "its greenboot.conf allows and "
            "the bootloader falls back to v1; the rollout pauses at its error threshold and "
            "dev2 never takes v2. Then v3 goes out in two batches and both boot green.",
        )
        usage = {device.name: store_usage(device.sysroot) for device in s.devices}
        self.serve()
        self.enroll()

        for version in ("2.0", "3.0"):
            s.promote(version, stable=False)
        d.say(
            "v2.0 and v3.0 are promoted and signed, but prod's stable tag stays on v1.0: the "
            "devices' update units find nothing of their own to stage, the fleet says what "
            "they run"
        )
        d.say("[bold]v2 in two batches, at most 10 % of a batch may fail[/]")
        self.atoll("rollout", "start", "v2", "--fleet", FLEET, "--image", self.image("2.0"),
                   "--batch", "1", "--error-threshold", "10")  # fmt: skip
        first, second = s.devices
        doc = s.wait_for_version(first, "1.0", rolled_back=True)
        reason = doc["atoll"]["lastRollback"]["reason"]
        d.say(f"{first.name}: {s.boots(first)}")
        d.show(d.atoll("status", "--sysroot", str(first.sysroot)).stdout)
        paused = self.wait_rollout("v2", "paused")
        d.show(self.atoll("rollout", "status", "v2").stdout)
        held = self.device(second.name)
        status = held.get("status") or {}
        if status.get("stagedDigest") == s.digests["2.0"] or status.get("bootedDigest") not in (
            None,
            s.digests["1.0"],
        ):
            raise DemoStepError(f"{second.name} took v2.0 although the rollout paused")
        d.say(
            f"{second.name} never took v2.0: its batch was not released "
            f"({paused.get('reason') or 'paused'})"
        )
        usage[first.name] = s.record_update(first, "update to v2.0", usage[first.name])
        self.atoll("rollout", "abort", "v2", "--reason", "v2.0 fails its health check")

        d.say("[bold]v3 fixes the check: two batches again[/]")
        self.atoll("rollout", "start", "v3", "--fleet", FLEET, "--image", self.image("3.0"),
                   "--batch", "1", "--error-threshold", "10")  # fmt: skip
        for device in s.devices:
            s.wait_for_version(device, "3.0")
            d.say(f"{device.name}: {s.boots(device)}")
        self.wait_rollout("v3", "done")
        d.show(self.atoll("rollout", "status", "v3").stdout)
        d.show(self.atoll("list", "devices").stdout)
        booted = s.status(first)["booted"]
        root = (
            first.sysroot
            / "atoll/deploy"
            / booted["atoll"]["stateroot"]
            / "deploy"
            / f"{booted['atoll']['commit']}.{booted['atoll']['deploySerial']}"
        )
        listing = d.command("ls", "-l", str(root / osimage.PACKAGE), note="the new package")
        d.show(listing.stdout)
        for device in s.devices:
            s.record_update(device, "update to v3.0", usage[device.name])
        d.say(f"the dashboard: {self.url}/ui/ (sign in with the token in $DEMO/fleet/viewer.token)")
        s.fleet_url = f"{self.url}/ui/"
        name = reason.get("name") if isinstance(reason, dict) else reason
        return (
            f"v2.0 rolled back on dev1 ({name} failed), rollout paused, dev2 kept v1.0; "
            "v3.0 rolled out in two batches, both green"
        )

    def serve(self) -> None:
        """The server on the host's loopback, its database in SQLite, bridged to the LAN."""
        s, d = self.story, self.demo
        self.directory.mkdir(exist_ok=True)
        db = f"sqlite:///{self.directory / 'fleet.db'}"
        key = str(self.directory / "ca.pem")
        d.atoll("fleet", "db", "upgrade", "--db", db, "--ca-key", key)
        tokens = {}
        for name, role in (("admin", "admin"), ("viewer", "viewer")):
            done = d.atoll("fleet", "token", "create", name, "--role", role, "--db", db, quiet=True)
            tokens[name] = done.stdout.strip()
            path = self.directory / f"{name}.token"
            path.write_text(tokens[name] + "\n")
            path.chmod(0o600)
        d.say("operator tokens made in the database: $DEMO/fleet/admin.token, viewer.token")
        self.port = free_port()
        argv = ["fleet", "serve", "--db", db, "--ca-key", key, "--listen", f"127.0.0.1:{self.port}"]
        d.start("fleet", atoll_argv(*argv), shown=["atoll", *argv])
        d.wait_until("the fleet server answers", self._answers, 60, every=0.2)
        members = [f"/run/netns/{s.netns(name)}" for name in DEVICE_NAMES]
        d.start(
            "fleet-bridge",
            atoll_argv_module("atoll.demo.bridge", str(self.port), *members),
            shown=["python3", "-m", "atoll.demo.bridge", str(self.port), *members],
        )
        self.env = {
            **d.env,
            "ATOLL_FLEET_SERVER": self.url,
            "ATOLL_FLEET_TOKEN": tokens["admin"],
        }
        d.say(
            f"export ATOLL_FLEET_SERVER={self.url} ATOLL_FLEET_TOKEN=$(cat $DEMO/fleet/admin.token)"
        )
        fleet = self.directory / f"{FLEET}.yaml"
        fleet.write_text(
            f"kind: Fleet\nname: {FLEET}\nspec:\n  selector: ''\n  autoApprove: true\n"
            f"  template:\n    os:\n      image: {self.image('1.0')}\n"
            "    updatePolicy:\n      policy: apply\n"
        )
        d.show(fleet.read_text())
        d.show(self.atoll("apply", "-f", str(fleet)).stdout)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def enroll(self) -> None:
        """Each device enrolls itself, then systemd runs its agent."""
        s, d = self.story, self.demo
        token = self.atoll("enrollment", "token", "--reusable", quiet=True).stdout.strip()
        d.say("an enrollment token for the devices (reusable; the fleet approves them itself)")
        for device in s.devices:
            out = s.inside(device, "atoll", "agent", "enroll", "--server", self.url,
                           "--token", token, "--name", device.name)  # fmt: skip
            d.show(out.stdout.replace(token, "atf_…"))
            s.inside(device, "systemctl", "enable", "--now", AGENT_UNIT)
        for device in s.devices:
            d.wait_until(
                f"{device.name} reports its first spec applied",
                lambda device=device: (  # type: ignore[misc]
                    (self.device(device.name).get("status") or {}).get("appliedVersion", 0) >= 1
                ),
                300,
                every=2,
            )
        d.show(self.atoll("list", "devices").stdout)

    def device(self, name: str) -> dict[str, Any]:
        done = self.atoll("get", "device", name, "--json", quiet=True, check=False)
        if done.returncode != 0:
            return {}
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def wait_rollout(self, name: str, state: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def there() -> bool:
            done = self.atoll("rollout", "status", name, "--json", quiet=True, check=False)
            if done.returncode != 0:
                return False
            found.update(json.loads(done.stdout))
            return found.get("state") == state

        self.demo.wait_until(f"rollout {name} is {state}", there, 300, every=2)
        return found
