"""Steps 4 and 5 of the story: the web workload under each device's supervisor
(socket-activated), the failover pair in front of it, and a killed process that
comes back. See atoll.demo.story for where each piece runs."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from dataclasses import dataclass
from typing import Any

from atoll.demo.framework import Done
from atoll.demo.registry import free_port
from atoll.demo.story import (
    Device,
    Story,
    atoll_argv,
    read_json,
    runtime_dir,
    tcp_port_free,
)
from atoll.errors import DemoStepError
from atoll.podman import isolated_environment
from atoll.run import find_tool

WEB_REPO = "apps/web"
SERVICE_PORT = 8080

WEB_UNIT = """\
[Unit]
Description=the demo's web server

[Container]
Image={image}
ContainerName=web
Network=host
Environment=DEVICE={device} PORT={port}
AutoUpdate=registry
# busybox httpd runs as the container's PID 1, which ignores SIGTERM.
StopTimeout=2

[Service]
Restart=always
RestartSec=1
"""
WEB_SOCKET = """\
[Socket]
ListenStream=127.0.0.1:{port}
ProxyTo=127.0.0.1:{inner}
"""
WEB_CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY start.sh /start.sh
ENV VERSION={version}
CMD ["/bin/busybox", "sh", "/start.sh"]
"""
WEB_START = """\
/bin/busybox mkdir -p /www
echo "web $VERSION on $DEVICE" > /www/index.html
exec /bin/busybox httpd -f -p "127.0.0.1:$PORT" -h /www
"""
WEB_BROKEN_START = """\
echo "web $VERSION: cannot start: missing configuration" >&2
exit 1
"""


@dataclass
class Services:
    story: Story

    def failover_step(self) -> str:
        d = self.story.demo
        d.section(
            "4",
            "A socket-activated web workload; two devices, one service address",
            "Each device's supervisor (atoll workload run) listens for the web unit and starts "
            "its container on the first connection. The failover agents elect a master "
            "(VRRP's rules over unicast UDP), which listens on the service address and "
            "forwards to its device's web listener.",
        )
        self.build_web_images()
        port = SERVICE_PORT if tcp_port_free(SERVICE_PORT) else free_port()
        self.story.service = f"127.0.0.1:{port}"
        for device in self.story.devices:
            self.start_web(device)
        first, second = self.story.devices
        shown = self.workload(first, "status", "web")
        d.show(shown.stdout)
        if self.web_state(first).get("state") == "active":
            raise DemoStepError("the web unit runs before any request reached it")
        d.say("nothing runs yet: the supervisor only listens")
        # dev1 first: with no preemption, whichever agent is up first keeps the address.
        self.start_failover(first)
        d.wait_until(
            f"{first.name} is master",
            lambda: read_json(first.failover_status).get("addressHeld") is True,
            60,
        )
        self.start_failover(second)
        d.wait_until(
            f"{second.name} follows {first.name}",
            lambda: read_json(second.failover_status).get("master") == first.name,
            60,
        )
        answer = self.curl()
        if answer != f"web v1 on {first.name}":
            raise DemoStepError(f"the first request got {answer!r}, not dev1's web v1")
        shown = self.workload(first, "status", "web")
        d.show(shown.stdout)
        out = d.atoll("failover", "status", "--status-file", str(second.failover_status))
        d.show(out.stdout)

        d.say(
            f"[bold]Power off {first.name}[/]: its failover agent is killed (as by a power "
            "cut), its supervisor and container stop, its system shuts down"
        )
        d.stop(f"{first.name}-failover", kill=True)
        took = d.wait_until(
            f"{second.name} serves",
            lambda: self._answer() == f"web v1 on {second.name}",
            60,
            every=0.05,
        )
        d.stop(f"{first.name}-web")
        d.stop(f"{first.name}-boot")
        self.curl()
        d.say(f"the standby answered {took:.1f} s after the master's agent died")
        out = d.atoll("failover", "status", "--status-file", str(second.failover_status))
        d.show(out.stdout)

        d.say(f"[bold]Power {first.name} on again[/]: without preemption it stays standby")
        self.story.boot(first)
        self.start_web(first)
        self.start_failover(first)
        d.wait_until(
            f"{first.name} follows {second.name}",
            lambda: read_json(first.failover_status).get("master") == second.name,
            60,
        )
        out = d.atoll("failover", "status", "--status-file", str(first.failover_status))
        d.show(out.stdout)
        self.curl()
        return (
            f"web started on the first request; {second.name} took {self.story.service} over "
            f"{took:.1f} s after {first.name}'s agent died"
        )

    # --- 5 ------------------------------------------------------------------------------

    def restart_step(self) -> str:
        d = self.story.demo
        active = self.active_device()
        d.section(
            "5",
            "The web process is killed: the supervisor restarts it",
            f"{active.name} serves the address now. Its web unit has Restart=always; killing "
            "its process with SIGKILL ends the container, and the supervisor starts it again.",
        )
        before = self.web_state(active)
        d.command(
            find_tool("pkill"),
            "-9",
            "-f",
            f"httpd -f -p 127.0.0.1:{active.inner_port}",
            shown=["pkill", "-9", "-f", f"httpd -f -p 127.0.0.1:{active.inner_port}"],
        )
        restarts = int(before.get("restarts") or 0)
        d.wait_until(
            "the web unit is restarted",
            lambda: (
                int(self.web_state(active).get("restarts") or 0) > restarts
                and self.web_state(active).get("state") == "active"
            ),
            60,
        )
        d.wait_until(
            "the service answers again",
            lambda: self._answer() == f"web v1 on {active.name}",
            60,
        )
        shown = self.workload(active, "status", "web")
        d.show(shown.stdout)
        self.curl()
        after = self.web_state(active)
        return f"web on {active.name} restarted ({after.get('restarts')} restart(s) in all)"

    # --- 6 ------------------------------------------------------------------------------

    def auto_update_step(self) -> str:
        d = self.story.demo
        active = self.active_device()
        standby = next(x for x in self.story.devices if x is not active)
        d.section(
            "6",
            "Workload updates on both devices: v1 -> v2 taken, a broken v3 rolled back",
            "The web unit has AutoUpdate=registry. Moving apps/web:prod to v2 updates it on "
            "both devices at once; v3 exits at once, fails the watch window and is rolled "
            "back to v2 while the service keeps answering.",
        )
        d.say(
            f"{standby.name} is the standby: no request has reached its web unit, so it is "
            "not running, and auto-update leaves units that are not running alone (as podman "
            f"does). One request to {standby.name}'s own listener starts it."
        )
        self.curl(f"127.0.0.1:{standby.web_port}")
        watch = "10s" if d.fast else "30s"
        self.move_tag("v2")
        for device, table in self.auto_update_all(watch):
            if not re.search(r"^web\S*\s.*\strue\s*$", table, re.MULTILINE):
                raise DemoStepError(f"auto-update on {device.name} did not take v2")
        self.wait_for_version("v2", active, standby)

        self.move_tag("v3")
        for device, table in self.auto_update_all(watch, expect_failure=True):
            if "rolled back" not in table:
                raise DemoStepError(f"auto-update on {device.name} did not roll v3 back")
        self.wait_for_version("v2", active, standby)
        return f"{active.name} and {standby.name}: v2 taken, v3 rolled back, still serving v2"

    def wait_for_version(self, version: str, active: Device, standby: Device) -> None:
        """The service address and the standby's own listener both answer *version*."""
        own = f"127.0.0.1:{standby.web_port}"
        self.story.demo.wait_until(
            f"the service and {standby.name} answer with {version}",
            lambda: (
                self._answer() == f"web {version} on {active.name}"
                and self._answer(own) == f"web {version} on {standby.name}"
            ),
            60,
        )
        self.curl()
        self.curl(own)

    def move_tag(self, version: str) -> None:
        self.story.demo.atoll(
            "image",
            "copy",
            f"docker://{self.story.registry}/{WEB_REPO}:{version}",
            f"docker://{self.story.registry}/{WEB_REPO}:prod",
            note=f"apps/web:prod now names {version}",
        )

    def auto_update_all(
        self, watch: str, *, expect_failure: bool = False
    ) -> list[tuple[Device, str]]:
        """Run ``atoll workload auto-update`` on every device at once; return each
        device's table."""
        d = self.story.demo
        runs = [
            (
                (
                    "workload",
                    "auto-update",
                    "--root",
                    str(device.units),
                    "--state-dir",
                    str(device.state_dir),
                    "--update-state-dir",
                    str(device.units.parent / "updates"),
                    "--watch",
                    watch,
                ),
                device.podman_env,
            )
            for device in self.story.devices
        ]
        tables = []
        for device, done in zip(self.story.devices, d.atoll_together(runs), strict=True):
            d.say(f"[bold]{device.name}[/]:")
            d.show(done.stdout)
            if (done.returncode != 0) != expect_failure:
                raise DemoStepError(
                    f"atoll workload auto-update on {device.name} exited {done.returncode}: "
                    + (done.stderr.strip().splitlines() or ["no message"])[-1]
                )
            tables.append((device, done.stdout))
        return tables

    def active_device(self) -> Device:
        for device in self.story.devices:
            if read_json(device.failover_status).get("addressHeld"):
                return device
        raise DemoStepError("no device serves the service address")

    def build_web_images(self) -> None:
        d = self.story.demo
        podman = find_tool("podman")
        build_env = {
            **d.env,
            **isolated_environment(
                d.workdir / "podman" / "build", registries_conf=d.workdir / "registries.conf"
            ),
        }
        busybox = find_tool("busybox", "busybox-static")
        for version, start in (("v1", WEB_START), ("v2", WEB_START), ("v3", WEB_BROKEN_START)):
            ctx = d.workdir / "web" / version
            ctx.mkdir(parents=True, exist_ok=True)
            shutil.copy2(busybox, ctx / "busybox")
            (ctx / "start.sh").write_text(start)
            (ctx / "Containerfile").write_text(WEB_CONTAINERFILE.format(version=version))
            d.command(
                podman,
                "build",
                "-q",
                "-t",
                f"localhost/web:{version}",
                str(ctx),
                shown=["podman", "build", "-t", f"localhost/web:{version}", str(ctx)],
                env=build_env,
            )
            d.atoll(
                "image",
                "copy",
                f"containers-storage:localhost/web:{version}",
                f"docker://{self.story.registry}/{WEB_REPO}:{version}",
                env=build_env,
            )
        d.atoll(
            "image",
            "copy",
            f"docker://{self.story.registry}/{WEB_REPO}:v1",
            f"docker://{self.story.registry}/{WEB_REPO}:prod",
            note="the devices run apps/web:prod",
        )

    def start_web(self, device: Device) -> None:
        """The device's workload supervisor, with the web unit socket-activated."""
        d = self.story.demo
        if not device.podman_env:
            device.podman_env = {
                **d.env,
                **isolated_environment(
                    runtime_dir(d.workdir) / "podman" / device.name,
                    registries_conf=d.workdir / "registries.conf",
                ),
            }
        units = device.units
        units.mkdir(parents=True, exist_ok=True)
        (units / "web.container").write_text(
            WEB_UNIT.format(
                image=f"{self.story.registry}/{WEB_REPO}:prod",
                device=device.name,
                port=device.inner_port,
            )
        )
        (units / "web.socket").write_text(
            WEB_SOCKET.format(port=device.web_port, inner=device.inner_port)
        )
        args = ["workload", "run", "--root", str(units), "--state-dir", str(device.state_dir)]
        d.start(
            f"{device.name}-web",
            atoll_argv(*args),
            shown=["atoll", *args],
            env=device.podman_env,
        )
        d.wait_until(
            f"{device.name}'s supervisor answers",
            lambda: self.workload(device, "status", "web", quiet=True, check=False).returncode == 0,
            60,
        )

    def workload(self, device: Device, *args: str, quiet: bool = False, check: bool = True) -> Done:
        return self.story.demo.atoll(
            "workload",
            *args,
            "--state-dir",
            str(device.state_dir),
            quiet=quiet,
            check=check,
            env=device.podman_env,
        )

    def web_state(self, device: Device) -> dict[str, Any]:
        done = self.workload(device, "status", "web", "--json", quiet=True, check=False)
        if done.returncode != 0:
            return {}
        units = json.loads(done.stdout).get("units") or [{}]
        found: dict[str, Any] = units[0]
        return found

    def start_failover(self, device: Device) -> None:
        d = self.story.demo
        peers = [p for p in self.story.devices if p is not device]
        args = [
            "failover",
            "run",
            "--name",
            device.name,
            "--listen",
            f"127.0.0.1:{device.advert_port}",
            *[a for p in peers for a in ("--peer", f"127.0.0.1:{p.advert_port}")],
            "--priority",
            str(device.priority),
            "--interval",
            str(self.story.interval),
            "--address",
            self.story.service,
            "--backend",
            f"127.0.0.1:{device.web_port}",
            "--status-file",
            str(device.failover_status),
        ]
        d.start(f"{device.name}-failover", atoll_argv(*args), shown=["atoll", *args])

    def _answer(self, address: str | None = None) -> str | None:
        try:
            url = f"http://{address or self.story.service}/"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return str(reply.read().decode().strip())
        except OSError:
            return None

    def curl(self, address: str | None = None) -> str:
        out = self.story.demo.command(
            find_tool("curl"), "-s", f"http://{address or self.story.service}/", check=False
        )
        self.story.demo.show(out.stdout or "(no answer)")
        return out.stdout.strip()
