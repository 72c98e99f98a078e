"""The Debian tree of the LAN devices: the tests' bookworm tree plus keepalived.

Built once beside the other Debian trees (helpers.debian); keepalived and
iproute2 come from the distribution, python3 serves the test workload.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from atoll.demo import basetree
from atoll.device.netns import Lan
from atoll.device.nspawn import ContainerBoot, boot_container, child_pids
from atoll.units import FAILOVER_UNITS, install_atoll, install_units
from helpers import debian, podman5
from helpers.workloads import GOOD, build_workload_image

PACKAGES = (*debian.PACKAGES, "keepalived", "iproute2")
RECIPE: dict[str, object] = {
    "suite": basetree.SUITE,
    "variant": "minbase",
    "include": list(PACKAGES),
    "mirror": basetree.MIRROR,
    "prepare": "lan-1",
}


def _bootstrap(target: Path) -> None:
    debian._debootstrap(target, PACKAGES)


def _prepare(root: Path) -> None:
    debian.prepare_tree(root)
    # Each test writes its own keepalived.conf; the packaged unit waits for one.
    (root / "etc/keepalived/keepalived.conf").unlink(missing_ok=True)


LAN_TREE = debian.TreeRecipe(RECIPE, _bootstrap, _prepare)


def ensure_lan_tree(cache: Path | None = None) -> debian.DebianTree:
    return debian.ensure_debian_tree(cache, LAN_TREE)


# --- devices on a LAN -------------------------------------------------------------------

WEB_UNIT = """\
[Unit]
Description=test workload: answers with the device's name

[Service]
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 --directory /srv/web

[Install]
WantedBy=multi-user.target
"""
WEB_QUADLET = """\
[Container]
Image=oci:/srv/images/web:v1
Network=host
Environment=PORT=8080

[Install]
WantedBy=multi-user.target
"""
#: The workload's health check, keepalived's track_script.
WEB_HEALTH = """\
#!/usr/bin/python3
import sys
import urllib.request

try:
    urllib.request.urlopen("http://127.0.0.1:8080/", timeout=0.8).read()
except OSError:
    sys.exit(1)
"""
SETTINGS = """\
[failover]
instance = "web"
router_id = 51
interface = "eth0"
address = "{vip}"
priority = {priority}
interval = {interval}
source = "{source}"
peers = [{peers}]
check = ["/usr/local/bin/web-health"]
check_interval = 1
fall = 1
rise = 1
notify_master = ["/usr/bin/touch", "/run/became-master"]
notify_backup = ["/usr/bin/rm", "-f", "/run/became-master"]
"""


class LanDevice:
    """A container-boot device in its LAN namespace: keepalived, the web workload
    and atoll (for ``atoll failover config`` and ``status``) in it."""

    def __init__(
        self, lan: Lan, name: str, work: Path, tree: debian.DebianTree, *, podman: bool = False
    ) -> None:
        self.lan, self.name, self.podman = lan, name, podman
        self.machine = f"{lan.name}-{name}"
        self.console = work / f"{name}.console"
        self.root, self.var = debian.make_deployment(tree.rootfs, work / name)
        self._thread: threading.Thread | None = None
        self.boots: list[ContainerBoot] = []

    @property
    def address(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return self.lan.members[self.name]

    def configure(self, *, vip: str, priority: int, interval: float, peers: list[str]) -> None:
        install_atoll(self.root)
        install_units(self.root, FAILOVER_UNITS)
        page = f"served by {self.name}\n"
        if self.podman:
            # The device's podman runs it: Quadlet's generator makes web.service.
            build_workload_image(self.root / "srv/images/web", "v1", cmd=GOOD, page=page)
            quadlet = self.root / "etc/containers/systemd/web.container"
            quadlet.parent.mkdir(parents=True, exist_ok=True)
            quadlet.write_text(WEB_QUADLET)
        else:
            (self.root / "srv/web").mkdir(parents=True)
            (self.root / "srv/web/index.html").write_text(page)
            debian.add_unit(self.root, "web.service", WEB_UNIT)
        health = self.root / "usr/local/bin/web-health"
        health.write_text(WEB_HEALTH)
        health.chmod(0o755)
        settings = self.root / "etc/atoll/failover.toml"
        settings.parent.mkdir(parents=True)
        settings.write_text(
            SETTINGS.format(
                vip=vip,
                priority=priority,
                interval=interval,
                source=self.address.ip,
                peers=", ".join(f'"{p}"' for p in peers),
            )
        )

    def boot(self) -> None:
        """Power on: boot in a thread until the container ends."""
        assert self._thread is None or not self._thread.is_alive()

        def run() -> None:
            self.boots.append(
                boot_container(
                    self.root,
                    var=self.var,
                    machine=self.machine,
                    timeout=600,
                    console_log=self.console,
                    network=str(self.lan.path(self.name)),
                    containers=self.podman,
                )
            )

        self._thread = threading.Thread(target=run, name=self.machine, daemon=True)
        self._thread.start()

    def init_pid(self, timeout: float = 30) -> int:
        """The container's PID 1 (systemd), once it runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in _nspawn_pids(self.machine):
                children = child_pids(pid)
                if children:
                    return children[0]
            time.sleep(0.05)
        raise AssertionError(f"{self.machine} did not start; console:\n{self.tail()}")

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside the running device (all of its namespaces)."""
        return subprocess.run(
            ["nsenter", f"--target={self.init_pid()}", "--all", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def power_off(self) -> float:
        """Kill the container's PID 1 (the kernel ends everything in it) and
        take its link down; returns the monotonic time of the kill."""
        pid = self.init_pid()
        at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.lan.unplug(self.name)
        self.wait_down()
        return at

    def power_on(self) -> None:
        self.lan.plug(self.name)
        self.boot()

    def wait_down(self, timeout: float = 30) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"{self.machine} still runs"

    def stop(self) -> None:
        """Power off if running; for the end of a test, whatever happened."""
        for pid in _nspawn_pids(self.machine):
            for child in child_pids(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        self.wait_down()

    def mac(self) -> str:
        out = subprocess.run(
            ["ip", "-n", self.lan.netns(self.name), "-j", "link", "show", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return str(json.loads(out)[0]["address"])

    def holds(self, vip: str) -> bool:
        out = subprocess.run(
            ["ip", "-n", self.lan.netns(self.name), "-j", "addr", "show", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ips = [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]
        return vip.split("/", maxsplit=1)[0] in ips

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no console log)"


def _nspawn_pids(machine: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and f"--machine={machine}".encode() in argv:
            found.append(int(entry.name))
    return found


#: Asks the VIP every 20 ms from the client's namespace; prints "MONOTONIC BODY" or
#: "MONOTONIC -" for no answer.  CLOCK_MONOTONIC is the same in every namespace here.
POLLER = """\
import sys, time, urllib.request
url = sys.argv[1]
while True:
    try:
        body = urllib.request.urlopen(url, timeout=0.1).read().decode().strip()
    except OSError:
        body = "-"
    print(f"{time.monotonic():.4f} {body}", flush=True)
    time.sleep(0.02)
"""


class Client:
    """The client namespace: one request, or a poller reading the VIP continuously."""

    def __init__(self, lan: Lan, name: str = "client") -> None:
        self.lan, self.netns = lan, lan.netns(name)

    def get(self, url: str, timeout: float = 2.0) -> str:
        code = (
            "import sys, urllib.request\n"
            "try:\n"
            "    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))"
            ".read().decode().strip())\n"
            "except OSError as e:\n"
            "    print('-', e)\n"
        )
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", code, url, str(timeout)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def neighbour(self, ip: str) -> str | None:
        out = subprocess.run(
            ["ip", "-n", self.netns, "-j", "neigh", "show", ip],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        entries = json.loads(out or "[]")
        return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None

    @contextlib.contextmanager
    def polling(self, url: str) -> Iterator[Poll]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", POLLER, url],
            stdout=subprocess.PIPE,
            text=True,
        )
        poll = Poll(proc)
        try:
            yield poll
        finally:
            proc.kill()
            proc.wait()


class Poll:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc
        self.answers: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            at, _, body = line.strip().partition(" ")
            self.answers.append((float(at), body))

    def first(self, body: str, after: float, timeout: float = 15) -> float:
        """When *body* was first answered after *after* (monotonic seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, got in list(self.answers):
                if at > after and got == body:
                    return at
            time.sleep(0.02)
        seen = sorted({b for a, b in self.answers if a > after})
        raise AssertionError(f"no {body!r} within {timeout} s after the change; saw {seen}")


# --- devices whose workload is a Quadlet unit run by their own podman ------------------

#: Debian trixie with podman 5 (helpers.podman5's packages) and keepalived.
PODMAN_PACKAGES = (*podman5.PACKAGES, "keepalived", "iproute2")
PODMAN_RECIPE: dict[str, object] = {
    "suite": podman5.SUITE,
    "variant": "minbase",
    "include": list(PODMAN_PACKAGES),
    "mirror": basetree.MIRROR,
    "prepare": "lan-podman-1",
}


def _prepare_podman(root: Path) -> None:
    debian.prepare_tree(root)
    (root / "etc/keepalived/keepalived.conf").unlink(missing_ok=True)
    (root / "etc/containers/containers.conf").write_text(podman5.CONTAINERS_CONF)


PODMAN_TREE = debian.TreeRecipe(
    PODMAN_RECIPE,
    lambda target: basetree.debootstrap(target, PODMAN_PACKAGES, suite=podman5.SUITE),
    _prepare_podman,
)


def ensure_podman_lan_tree(cache: Path | None = None) -> debian.DebianTree:
    return debian.ensure_debian_tree(cache, PODMAN_TREE)
