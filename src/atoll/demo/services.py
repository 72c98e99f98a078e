"""Steps 2 (the workload image), 4, 5 and 6 of the story: failover by keepalived on
the LAN, a killed workload restarted by its device's systemd, and the workload's
auto-update and rollback by its device's podman. See atoll.demo.story for where
each piece runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass

from atoll.demo.story import VIP, WEB_PORT, WEB_REPO, Device, Story
from atoll.errors import DemoStepError
from atoll.podman import isolated_environment
from atoll.run import find_tool

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
exec /bin/busybox httpd -f -p "$PORT" -h /www
"""
WEB_BROKEN_START = """\
echo "web $VERSION: cannot start: missing configuration" >&2
exit 1
"""
SERVICE = f"http://{VIP}:{WEB_PORT}/"


@dataclass
class Services:
    story: Story

    def images_step(self) -> str:
        built = self.story.os_images_step()
        self.story.demo.say("[bold]the web workload[/]: v1, v2 and a broken v3")
        self.build_web_images()
        return f"{built}; {WEB_REPO} v1, v2, v3 pushed, prod -> v1"

    # --- 4 ------------------------------------------------------------------------------

    def failover_step(self) -> str:
        story = self.story
        d = story.demo
        d.section(
            "4",
            f"One service address: keepalived moves {VIP} when the master is powered off",
            "Each device's keepalived (VRRP, configured by atoll failover config from "
            "/etc/atoll/failover.toml) tracks its web workload. dev1 (priority 150), up first, "
            "holds the virtual IP; the client's requests go to whichever device holds it, "
            "and the one that holds it is powered off.",
        )
        for device in story.devices:
            self.wait_serving(device)
        # dev1 normally; the other one if dev1's check failed meanwhile (a loaded machine).
        first = self.active_device()
        second = next(x for x in story.devices if x is not first)
        d.show(d.command(*self.ip("-n", first.netns, "-br", "addr", "show", "eth0")).stdout)
        self.show_failover(first)
        answer = self.client()
        if answer != f"web v1 on {first.name}":
            raise DemoStepError(f"the first request got {answer!r}, not {first.name}'s web v1")
        self.show_failover(second)

        d.say(
            f"[bold]Power off {first.name}[/]: its systemd is killed (the kernel ends "
            "everything in the device) and its link goes dark"
        )
        took = self.power_off(first)
        d.say(f"the standby answered {took:.1f} s after the master's power went")
        self.client()
        self.show_failover(second)

        d.say(f"[bold]Power {first.name} on again[/]: without preemption it stays standby")
        self.power_on(first)
        self.wait_serving(first)
        self.show_failover(first)
        if self.client() != f"web v1 on {second.name}":
            raise DemoStepError(f"{first.name} took the address back")
        return (
            f"{second.name} took {VIP} over {took:.1f} s after {first.name} was powered off; "
            f"{first.name} came back as standby"
        )

    def power_off(self, device: Device) -> float:
        """A power cut: the device's systemd killed, its harness stopped, its link down
        and its addresses gone (a machine without power answers nothing on the LAN).
        Returns the seconds until the other device answers the client."""
        story, d = self.story, self.story.demo
        pid = story.init_pid(device)
        if pid is None:
            raise DemoStepError(f"{device.name} is not running")
        other = next(x for x in story.devices if x is not device)
        started = time.monotonic()
        d.echo(["kill", "-KILL", str(pid)], note=f"{device.name}'s systemd")
        os.kill(pid, signal.SIGKILL)
        d.stop(f"{device.name}-boot", kill=True)
        d.command(*self.ip("-n", device.netns, "link", "set", "eth0", "down"))
        d.command(*self.ip("-n", device.netns, "addr", "flush", "dev", "eth0"))
        d.wait_until(
            f"{other.name} answers",
            lambda: self.client(quiet=True) == f"web v1 on {other.name}",
            60,
            every=0.05,
        )
        return time.monotonic() - started

    def power_on(self, device: Device) -> None:
        d = self.story.demo
        d.command(
            *self.ip("-n", device.netns, "addr", "add", f"{device.address}/24", "dev", "eth0")
        )
        d.command(*self.ip("-n", device.netns, "link", "set", "eth0", "up"))
        self.story.boot(device)

    def wait_serving(self, device: Device) -> None:
        """Until *device*'s own address answers the client and its keepalived runs."""
        url = f"http://{device.address}:{WEB_PORT}/"
        self.story.demo.wait_until(
            f"{device.name} serves",
            lambda: (
                (self.client(url, quiet=True) or "").endswith(f"on {device.name}")
                and self.failover_state(device) in ("MASTER", "BACKUP")
            ),
            120,
            every=0.3,
        )

    def failover_state(self, device: Device) -> str | None:
        """keepalived's state of the device's instance (atoll failover status)."""
        done = self.story.inside(
            device, "atoll", "failover", "status", "--json", check=False, quiet=True
        )
        if done.returncode != 0:
            return None
        instances = json.loads(done.stdout).get("instances") or [{}]
        state = instances[0].get("state")
        return str(state) if state else None

    def show_failover(self, device: Device) -> None:
        self.story.demo.show(self.story.inside(device, "atoll", "failover", "status").stdout)

    def ip(self, *args: str) -> list[str]:
        return [find_tool("ip", "iproute2"), *args]

    def client(self, url: str = SERVICE, *, quiet: bool = False) -> str:
        """One request from the client's namespace: what came back, stripped."""
        story = self.story
        argv = ["ip", "netns", "exec", story.netns("client"), "curl", "-s", "-m", "2", url]
        out = story.demo.command(
            find_tool("ip", "iproute2"), *argv[1:4], find_tool("curl"), *argv[5:],
            shown=argv, check=False, quiet=quiet,
        )  # fmt: skip
        if not quiet:
            story.demo.show(out.stdout or "(no answer)")
        return out.stdout.strip()

    # --- 5 ------------------------------------------------------------------------------

    def restart_step(self) -> str:
        story = self.story
        d = story.demo
        active = self.active_device()
        d.section(
            "5",
            "The web process is killed: the device's systemd restarts it",
            f"{active.name} holds the address now. Its web unit has Restart=always; killing "
            "the container's process with SIGKILL ends the unit, and systemd starts it again.",
        )
        before = self.restarts(active)
        story.inside(active, "podman", "kill", "--signal", "KILL", "web")
        # Restarted, and started: active once its health check passes (Notify=healthy).
        d.wait_until(
            "the web unit is restarted",
            lambda: self.restarts(active) > before and self.active(active),
            60,
        )
        d.wait_until(
            "the service answers again",
            lambda: self.client(quiet=True).startswith("web v1 on "),
            60,
        )
        d.show(
            story.inside(
                active, "systemctl", "show", "web.service", "-p", "ActiveState", "-p", "NRestarts"
            ).stdout
        )
        self.client()
        return f"web on {active.name} restarted ({self.restarts(active)} restart(s) in all)"

    def active(self, device: Device) -> bool:
        done = self.story.inside(
            device, "systemctl", "is-active", "web.service", check=False, quiet=True
        )
        return done.stdout.strip() == "active"

    def restarts(self, device: Device) -> int:
        done = self.story.inside(
            device, "systemctl", "show", "web.service", "-p", "NRestarts", "--value",
            check=False, quiet=True,
        )  # fmt: skip
        try:
            return int(done.stdout.strip())
        except ValueError:
            return 0

    # --- 6 ------------------------------------------------------------------------------

    def auto_update_step(self) -> str:
        story = self.story
        d = story.demo
        d.section(
            "6",
            "Workload updates in both devices: v1 -> v2 taken, a broken v3 rolled back",
            "The web unit has AutoUpdate=registry. Moving apps/web:prod to v2 and running "
            "podman auto-update in each device pulls v2 and restarts the unit; v3 never "
            "answers its health check, its start fails and podman rolls it back to v2 "
            "while the service keeps answering.",
        )
        self.move_tag("v2")
        for device, table in self.auto_update_all():
            if not re.search(r"^\s*web\.service\s.*\strue\s*$", table, re.MULTILINE):
                raise DemoStepError(f"podman auto-update in {device.name} did not take v2")
        self.wait_for_version("v2")

        self.move_tag("v3")
        for device, table in self.auto_update_all():
            if "rolled back" not in table:
                raise DemoStepError(f"podman auto-update in {device.name} did not roll v3 back")
        self.wait_for_version("v2")
        names = " and ".join(x.name for x in story.devices)
        return f"{names}: v2 taken, v3 rolled back, still serving v2"

    def wait_for_version(self, version: str) -> None:
        """The service address and each device's own address answer *version*."""
        story = self.story
        own = {x.name: f"http://{x.address}:{WEB_PORT}/" for x in story.devices}
        story.demo.wait_until(
            f"the service and every device answer with {version}",
            lambda: (
                self.client(quiet=True).startswith(f"web {version} on ")
                and all(
                    self.client(url, quiet=True) == f"web {version} on {name}"
                    for name, url in own.items()
                )
            ),
            60,
        )
        self.client()
        for url in own.values():
            self.client(url)

    def auto_update_all(self) -> list[tuple[Device, str]]:
        """``podman auto-update`` in every device, all at once (each device's own
        podman and systemd); return each device's table."""
        d = self.story.demo
        devices = self.story.devices
        runs = [self.story.inside_command(device, "podman", "auto-update") for device in devices]
        tables = []
        for device, done in zip(devices, d.commands_together(runs), strict=True):
            d.say(f"{device.name}:")
            d.show(done.stdout or done.stderr)
            tables.append((device, done.stdout))
        return tables

    def move_tag(self, version: str) -> None:
        self.story.demo.atoll(
            "image",
            "copy",
            f"docker://{self.story.registry}/{WEB_REPO}:{version}",
            f"docker://{self.story.registry}/{WEB_REPO}:prod",
            note=f"apps/web:prod now names {version}",
        )

    def active_device(self) -> Device:
        for device in self.story.devices:
            if self.story.holds_vip(device):
                return device
        raise DemoStepError(f"no device holds {VIP}")

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
