"""The edge story, step by step: each step is a function of the demo that runs
the ``atoll`` commands a user would type and returns one line for the summary.

Where the pieces run (see docs/demo.md):

- the registry: ``docker-registry`` on the host's 127.0.0.1, plain HTTP, and
  bridged into each device's own loopback at the same address
  (:mod:`atoll.demo.bridge`);
- a LAN of network namespaces (``ip netns``): a bridge in one, dev1, dev2 and a
  client each in their own, joined by veth pairs; the host never sees its addresses;
- each device: a sysroot under WORKDIR, booted with ``atoll device boot
  --network LAN-devN --containers`` (systemd-nspawn, systemd as PID 1): its own
  update timer pulls OS updates, checks their signatures, stages and reboots; its
  own podman runs the web workload (a Quadlet unit) and its own keepalived holds
  the virtual IP when it is the master (see :meth:`Story.configure_device`);
- the client: ``curl`` in the client's namespace, to the virtual IP.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.demo import basetree, osimage
from atoll.demo.framework import Demo, Done, FileWatch, spinner
from atoll.demo.registry import answers, free_port, write_config
from atoll.errors import DemoStepError
from atoll.run import base_environment, find_tool, run

OS_STAGE = "stage/edge-os"
OS_PROD = "prod/edge-os"
#: How often each device's update timer fires in the demo (hourly on a real device).
UPDATE_EVERY = "10s"


#: The agent's drop-in in each device's /etc (see :meth:`Story.configure_device`): the
#: demo's images carry no kernel, and a short poll keeps the story moving.
AGENT_DROPIN = (
    "[Service]\nExecStart=\nExecStart=/usr/bin/atoll agent run --state /var/lib/atoll/agent "
    "--sysroot /sysroot --allow-no-kernel --wait 3s\nRestartSec=2\n"
)


#: The LAN's addresses: the devices', the client's and the virtual IP (keepalived's).
SUBNET = "10.77.0"
VIP = f"{SUBNET}.100"
CLIENT_ADDRESS = f"{SUBNET}.20"
#: Where the web workload listens in each device.
WEB_PORT = 8080
DEVICE_NAMES = ("dev1", "dev2")
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WEB_REPO = "apps/web"

#: The web workload in each device: a Quadlet unit its podman's generator turns into
#: web.service. It counts as started once its health check passes (Notify=healthy), so
#: a version that never answers fails its start, and podman auto-update rolls it back.
WEB_QUADLET = """\
[Unit]
Description=the demo's web server

[Container]
Image={image}
ContainerName=web
Network=host
Environment=DEVICE={device} PORT={port}
AutoUpdate=registry
# The image has no /bin/sh: the check is run as it stands (JSON form), not by a shell.
HealthCmd=["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/"]
HealthInterval=2s
Notify=healthy
# busybox httpd runs as the container's PID 1, which ignores SIGTERM.
StopTimeout=2

[Service]
Restart=always
RestartSec=1
TimeoutStartSec=30

[Install]
WantedBy=multi-user.target
"""
#: keepalived's track_script: the workload answers on the device itself.
WEB_HEALTH = """\
#!/bin/bash
# One HTTP request to the workload on the device itself; bash alone, so it stays cheap.
exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1
printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3
read -r -t 2 status <&3 && [[ $status == *" 200 "* ]]
"""
#: /etc/atoll/failover.toml: keepalived.conf is written from it at each boot
#: (atoll-failover-config.service, docs/failover.md).
FAILOVER_SETTINGS = """\
[failover]
instance = "web"
router_id = 51
interface = "eth0"
address = "{vip}/24"
priority = {priority}
interval = {interval}
source = "{source}"
peers = [{peers}]
check = ["/etc/atoll/web-health"]
check_interval = 1
check_timeout = 2
fall = 2
rise = 1
"""
#: podman in a container-boot device: its cgroup tree has no pids controller.
CONTAINERS_CONF = """\
[containers]
pids_limit = 0
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
"""


@dataclass
class Device:
    name: str
    sysroot: Path
    #: Its address on the LAN (eth0 in its namespace).
    address: str
    priority: int
    #: Its network namespace (``ip netns`` name).
    netns: str
    #: (what, JSON result of install or upgrade) in order, for the transfer report.
    transfers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def console_log(self) -> Path:
        return self.sysroot.parent / "logs" / f"{self.name}-console.log"


@dataclass
class Story:
    demo: Demo
    base_tree: Path | None
    cache: Path
    #: An apt sources.list line for the base image (default: the tree's own sources).
    apt_source: str | None = None
    registry: str = ""
    devices: list[Device] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    #: The fleet dashboard's address, once step 7 serves it.
    fleet_url: str = ""

    @property
    def interval(self) -> float:
        return 0.3 if self.demo.fast else 1.0

    def os_ref(self, repo: str, tag: str) -> str:
        return f"docker://{self.registry}/{repo}:{tag}"

    # --- 1 ------------------------------------------------------------------------------

    @property
    def lan(self) -> str:
        return lan_name(self.demo.workdir)

    def netns(self, member: str) -> str:
        return f"{self.lan}-{member}"

    def registry_step(self) -> str:
        d = self.demo
        d.section(
            "1",
            "A registry on loopback, and a LAN of network namespaces",
            "The real CNCF Distribution registry (Debian's docker-registry) holds every "
            "image of the story: the OS in a stage and a prod repository, and the workload. "
            "The devices and a client get a LAN of their own: a bridge in one network "
            "namespace, a namespace per member joined to it by a veth pair.",
        )
        port = free_port()
        config = write_config(d.workdir / "registry", port)
        self.registry = f"127.0.0.1:{port}"
        # The registry reads REGISTRY_* variables as settings: give it none of ours.
        d.start(
            "registry",
            [find_tool("docker-registry"), "serve", str(config)],
            shown=["docker-registry", "serve", str(config)],
            env=base_environment(),
        )
        d.wait_until("the registry answers", lambda: answers(self.registry), 30, every=0.1)
        # Plain HTTP on loopback: registries.conf marks it insecure, for atoll and podman.
        (d.workdir / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{self.registry}"\ninsecure = true\n'
        )
        d.say(f"listening on http://{self.registry} (marked insecure in $DEMO/registries.conf)")
        self.lan_up()
        # The devices pull from the registry by the same name as the host pushes and
        # signs with: the harness bridges 127.0.0.1:PORT into each device's namespace.
        members = [f"/run/netns/{self.netns(name)}" for name in DEVICE_NAMES]
        d.start(
            "registry-bridge",
            atoll_argv_module("atoll.demo.bridge", str(port), *members),
            shown=["python3", "-m", "atoll.demo.bridge", str(port), *members],
        )
        d.say(
            f"the harness bridges {self.registry} into each device's own loopback: the "
            "devices pull by the name the host pushed and signed with"
        )
        return f"docker-registry on {self.registry}; LAN {self.lan} ({SUBNET}.0/24)"

    def lan_up(self) -> None:
        """The LAN as docs/device.md draws it, with ``ip`` as a user would type it."""
        d, lan = self.demo, self.netns("lan")

        def ip(*args: str) -> None:
            d.command(find_tool("ip", "iproute2"), *args, shown=["ip", *args])

        ip("netns", "add", lan)
        ip("-n", lan, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        ip("-n", lan, "link", "set", "br0", "up")
        members = [(name, f"{SUBNET}.{11 + i}") for i, name in enumerate(DEVICE_NAMES)]
        for port, (name, address) in enumerate([*members, ("client", CLIENT_ADDRESS)]):
            netns = self.netns(name)
            ip("netns", "add", netns)
            ip("-n", lan, "link", "add", f"vm{port}", "type", "veth",
               "peer", "name", "eth0", "netns", netns)  # fmt: skip
            ip("-n", lan, "link", "set", f"vm{port}", "master", "br0", "up")
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")

    # --- 2 ------------------------------------------------------------------------------

    def os_images_step(self) -> str:
        d = self.demo
        d.section(
            "2",
            "OS images v1, v2, v3: built from blueprints, promoted, signed",
            "Image Builder blueprints on a Debian trixie base with podman; podman runs the "
            "build steps and atoll adds itself, its units and keepalived. v2 adds a package "
            "and a required health check that fails; v3 fixes the check. v1 is promoted to "
            "prod and signed.",
        )
        tree = self.base_tree
        if tree is None:
            found = basetree.cached_tree(self.cache)
            if found is None:
                d.say(f"debootstrap of Debian trixie, once (kept in {self.cache})")
                with spinner(d.console, "  debootstrap trixie (a few minutes)"):
                    found = basetree.ensure_tree(self.cache, basetree.demo_recipe())
            tree = found
        d.say(f"base tree: {tree}")
        layout = d.workdir / "images"
        with spinner(d.console, "  writing the base image (its layer is packed once)"):
            osimage.write_base(layout, tree, self.cache, self.apt_source)
        blueprints = d.workdir / "blueprints"
        blueprints.mkdir(exist_ok=True)
        builds: list[tuple[Sequence[str], dict[str, str]]] = []
        for v in osimage.versions():
            path = blueprints / f"edge-os-{v.version}.toml"
            path.write_text(v.blueprint)
            d.say(f"v{v.version}: {v.note}")
            builds.append(
                (
                    [
                        "build",
                        "--blueprint",
                        str(path),
                        "--base",
                        f"oci:{layout}:base",
                        "-t",
                        self.os_ref(OS_STAGE, v.version),
                        "--network",
                        "host",
                        "--no-lint",
                        # Layers grouped by package, each file its own zstd frame, so
                        # the devices fetch only the files an update changes. --fast
                        # (the test suite's run) keeps podman's layers: rechunking is
                        # tested on its own, and costs a minute a build here.
                        *(["--no-rechunk"] if d.fast else ["--compression", "zstd:chunked"]),
                        # A work directory each: the three builds run at once.
                        "--workdir",
                        str(d.workdir / "build" / v.version),
                        "--json",
                    ],
                    d.env,
                )
            )
        d.say("the three builds run at once, each in its own work directory")
        with spinner(d.console, "  building 1.0, 2.0 and 3.0"):
            done = d.atoll_together(builds, check=True)
        for v, built in zip(osimage.versions(), done, strict=True):
            result = built.json()
            self.digests[v.version] = str(result["digest"])
            d.say(f"  {v.version}: {result['digest']} in {built.seconds:.0f} s")
        keys = d.workdir / "keys"
        keys.mkdir(exist_ok=True)
        d.atoll("key", "generate", "--output", str(keys / "release"))
        self.promote("1.0")
        out = d.atoll("verify", self.os_ref(OS_PROD, "stable"), "--key", str(keys / "release.pub"))
        d.show(out.stdout)
        # The devices' trust policy: the OS only from prod, signed with the release key.
        policy = {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {
                    f"{self.registry}/{OS_PROD}": [
                        {"type": "sigstoreSigned", "keyPath": str(keys / "release.pub")}
                    ]
                }
            },
        }
        self.policy.write_text(json.dumps(policy, indent=2) + "\n")
        d.say("the devices' trust policy ($DEMO/policy.json): prod/edge-os, signed by that key")
        return f"3 versions built into {OS_STAGE}; 1.0 promoted to {OS_PROD}:stable and signed"

    @property
    def policy(self) -> Path:
        return self.demo.workdir / "policy.json"

    def promote(self, version: str, *, stable: bool = True) -> None:
        """Promote a stage version to prod as VERSION, sign it for prod's stable tag, then
        (with *stable*) move stable to it: the devices, which poll stable, never see it
        unsigned."""
        d = self.demo
        for tag in (version, "stable") if stable else (version,):
            out = d.atoll(
                "promote",
                f"docker://{self.registry}/{OS_STAGE}@{self.digests[version]}",
                "--to",
                f"docker://{self.registry}/{OS_PROD}",
                "--tags",
                tag,
            )
            d.show(out.stdout)
            if tag == version:
                signed = d.atoll(
                    "sign",
                    self.os_ref(OS_PROD, version),
                    "--identity",
                    f"{self.registry}/{OS_PROD}:stable",
                    "--key",
                    str(d.workdir / "keys/release.key"),
                )
                d.show(signed.stdout)

    # --- 3 ------------------------------------------------------------------------------

    def devices_step(self) -> str:
        d = self.demo
        d.section(
            "3",
            "Two edge devices on the LAN, installed from v1 and booted",
            "Each device is a sysroot (object store, deployments, boot entries, /var) booted "
            "with systemd-nspawn in its own network namespace: systemd runs as PID 1, runs "
            "atoll's health checks, the web workload under the device's own podman "
            "(a Quadlet unit) and keepalived.",
        )
        for number, (name, priority) in enumerate(zip(DEVICE_NAMES, (150, 100), strict=True)):
            self.devices.append(
                Device(
                    name,
                    d.workdir / name,
                    address=f"{SUBNET}.{11 + number}",
                    priority=priority,
                    netns=self.netns(name),
                )
            )
        # Both installs at once, as two devices would be installed.
        installs = d.atoll_together(
            [
                (
                    [
                        "install",
                        "to-filesystem",
                        str(device.sysroot),
                        "--source",
                        f"{self.registry}/{OS_PROD}:stable",
                        "--allow-no-kernel",
                        "--policy",
                        str(self.policy),
                        "--json",
                    ],
                    d.env,
                )
                for device in self.devices
            ],
            check=True,
        )
        for device, done in zip(self.devices, installs, strict=True):
            result = done.json()
            device.transfers.append(("install v1.0", result))
            d.say(
                f"{device.name}: {result['filesTotal']} files, {result['filesNew']} new in its "
                f"store, {_size(result['bytesFetched'])} fetched in {done.seconds:.0f} s"
            )
            self.configure_device(device)
        d.say(
            "each device updates itself: /etc/atoll/updates.toml says policy = apply, its "
            "trust policy wants prod/edge-os signed by the release key, and its update timer "
            f"runs every {UPDATE_EVERY} (hourly on a real device) to reboot into what the "
            "fleet's agent stages (step 7)"
        )
        d.say(
            f"each device runs the web workload from /etc/containers/systemd/web.container and "
            f"keepalived from /etc/atoll/failover.toml: virtual IP {VIP}, priority 150 on dev1, "
            "100 on dev2, no preemption"
        )
        first, second = self.devices
        # dev1 first: with no preemption, whichever is up first keeps the address.
        self.boot(first)
        d.wait_until(f"{first.name} holds {VIP}", lambda: self.holds_vip(first), 180, every=0.1)
        self.boot(second)
        out = d.atoll("status", "--sysroot", str(first.sysroot))
        d.show(out.stdout)
        return f"dev1 and dev2 on v1.0, booted green on LAN {SUBNET}.0/24"

    def configure_device(self, device: Device) -> None:
        """What an administrator puts in the device's /etc: the update policy, the
        registry (plain HTTP on the device's loopback, bridged to the host's), the
        trust policy with the release key, the web workload as a Quadlet unit, the
        failover settings keepalived's configuration is written from, and (for the
        demo) an update timer that fires every few seconds. Local /etc changes are
        carried into every later deployment."""
        (root,) = device.sysroot.glob("atoll/deploy/*/deploy/*.0")
        etc = root / "etc"
        key = "/etc/containers/keys/release.pub"
        policy = {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {
                    f"{self.registry}/{OS_PROD}": [{"type": "sigstoreSigned", "keyPath": key}],
                    # The workload is not signed in this story.
                    f"{self.registry}/{WEB_REPO}": [{"type": "insecureAcceptAnything"}],
                }
            },
        }
        peers = ", ".join(f'"{p.address}"' for p in self.devices if p is not device)
        files = {
            "atoll/updates.toml": 'policy = "apply"\n',
            "containers/registries.conf": (
                f'[[registry]]\nlocation = "{self.registry}"\ninsecure = true\n'
            ),
            "containers/policy.json": json.dumps(policy, indent=2) + "\n",
            "containers/containers.conf": CONTAINERS_CONF,
            key.removeprefix("/etc/"): (self.demo.workdir / "keys/release.pub").read_text(),
            "containers/systemd/web.container": WEB_QUADLET.format(
                image=f"{self.registry}/{WEB_REPO}:prod", device=device.name, port=WEB_PORT
            ),
            "atoll/web-health": WEB_HEALTH.format(port=WEB_PORT),
            "atoll/failover.toml": FAILOVER_SETTINGS.format(
                vip=VIP,
                priority=device.priority,
                interval=self.interval,
                source=device.address,
                peers=peers,
            ),
            "systemd/system/atoll-fetch-apply-updates.timer.d/demo.conf": (
                f"[Timer]\nOnActiveSec=5s\nOnUnitActiveSec={UPDATE_EVERY}\n"
                "RandomizedDelaySec=0\nAccuracySec=1s\n"
            ),
            # The demo's images carry no kernel: the devices boot them as containers.
            # The fleet (step 7) drives the OS: the unit runs only when the agent has
            # staged an update, so it never stages one of its own while the agent does,
            # and --force tries again at the next tick, not after the backoff, if it
            # ever finds the sysroot busy.
            "systemd/system/atoll-fetch-apply-updates.service.d/demo.conf": (
                "[Service]\nExecCondition=/usr/bin/test -e /sysroot/atoll/staged.json\n"
                "ExecStart=\nExecStart=/usr/bin/atoll updates run --sysroot /sysroot "
                "--max-wait 90m --allow-no-kernel --force\n"
            ),
            # The fleet agent (step 7): enabled once the device has enrolled.
            "systemd/system/atoll-agent.service.d/demo.conf": AGENT_DROPIN,
        }
        for name, text in files.items():
            path = etc / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (etc / "atoll/web-health").chmod(0o755)
        # The workload is updated when the story says so, not by podman's daily timer.
        timer = etc / "systemd/system/podman-auto-update.timer"
        timer.unlink(missing_ok=True)
        timer.symlink_to("/dev/null")

    def holds_vip(self, device: Device) -> bool:
        """Whether *device*'s eth0 has the virtual IP (read from its namespace)."""
        done = self.demo.command(
            find_tool("ip", "iproute2"), "-n", device.netns, "-j", "addr", "show", "eth0",
            quiet=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return False
        links = json.loads(done.stdout or "[]")
        return VIP in [a.get("local") for link in links for a in link.get("addr_info", [])]

    def boot(self, device: Device) -> None:
        self.boot_all([device])

    def boot_all(self, devices: list[Device] | None = None) -> None:
        """Boot the devices and leave them running; return once each boot is green."""
        d = self.demo
        devices = self.devices if devices is None else devices
        before = {device.name: self._last_boot(device).get("bootId") for device in devices}
        for device in devices:
            self._start_boot(device)
        started = time.monotonic()
        for device in devices:
            changed = self.health_watch(device)
            d.wait_until(
                f"{device.name} boots green",
                lambda device=device, changed=changed: (  # type: ignore[misc]
                    changed() and self._green(device, before[device.name])
                ),
                180 if d.fast else 300,
                every=0.1,
            )
            d.say(
                f"{device.name}: booted, health checks green "
                f"{time.monotonic() - started:.1f} s after the start"
            )

    def _start_boot(self, device: Device) -> None:
        d = self.demo
        args = [
            "device",
            "boot",
            "--sysroot",
            str(device.sysroot),
            "--keep-running",
            "--network",
            device.netns,
            "--containers",
        ]
        d.start(
            f"{device.name}-boot",
            atoll_argv(*args, "--timeout", "3600", "--console-log", str(device.console_log)),
            shown=["atoll", *args],
            stop="int",
        )

    def init_pid(self, device: Device) -> int | None:
        """The PID (on the host) of the device's systemd, while it runs."""
        mark = f"--directory={device.sysroot}/".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"systemd-nspawn") and any(a.startswith(mark) for a in argv):
                children = (entry / "task" / entry.name / "children").read_text().split()
                if children:
                    return int(children[0])
        return None

    def inside(self, device: Device, *argv: str, check: bool = True, quiet: bool = False) -> Done:
        """Run *argv* in the running device (all of its namespaces), as
        ``nsenter --target PID --all`` does."""
        real, shown, env = self.inside_command(device, *argv)
        return self.demo.command(*real, check=check, quiet=quiet, shown=shown, env=env)

    def inside_command(
        self, device: Device, *argv: str
    ) -> tuple[list[str], list[str], dict[str, str]]:
        """The command that runs *argv* in the running device, as it is shown,
        and its environment: the device's own, no paths or settings of the host's."""
        pid = self.init_pid(device)
        if pid is None:
            raise DemoStepError(f"{device.name} is not running")
        return (
            [find_tool("nsenter", "util-linux"), f"--target={pid}", "--all", "--", *argv],
            ["nsenter", f"--target={pid}", "--all", *argv],
            {"PATH": DEVICE_PATH, "LANG": "C.UTF-8", "HOME": "/root"},
        )

    def health_watch(self, device: Device) -> FileWatch:
        """Tells when the device's health history may have a new record: every
        boot's checks add one (atoll.health.records), so a wait for a boot reads
        the device's status only then, and every few seconds besides."""
        return FileWatch(device.sysroot / "atoll/health/history.jsonl")

    def _green(self, device: Device, before: object) -> bool:
        last = self._last_boot(device)
        return last.get("bootId") not in (None, before) and last.get("outcome") == "green"

    def _last_boot(self, device: Device) -> dict[str, Any]:
        """The newest health record of the device (``atoll health status``), or {}."""
        done = self.demo.atoll(
            "health", "status", "--sysroot", str(device.sysroot), "--json", quiet=True, check=False
        )
        if done.returncode != 0:
            return {}
        history = json.loads(done.stdout).get("history") or []
        last: dict[str, Any] = history[-1] if history else {}
        return last

    # --- 7 ------------------------------------------------------------------------------

    def status(self, device: Device) -> dict[str, Any]:
        """``atoll status --json`` of the device's sysroot: its ``status``."""
        done = self.demo.atoll("status", "--sysroot", str(device.sysroot), "--json", quiet=True)
        found: dict[str, Any] = json.loads(done.stdout)["status"]
        return found

    def wait_for_version(
        self, device: Device, version: str, *, rolled_back: bool = False
    ) -> dict[str, Any]:
        """Wait until *device* runs *version* green (after an automatic rollback, with
        *rolled_back*); return its status."""
        d = self.demo
        found: dict[str, Any] = {}

        def there() -> bool:
            done = d.atoll(
                "status", "--sysroot", str(device.sysroot), "--json", quiet=True, check=False
            )
            if done.returncode != 0:
                return False
            doc = json.loads(done.stdout)["status"]
            booted = doc["booted"] or {}
            if (booted.get("image") or {}).get("version") != version:
                return False
            if rolled_back and not doc["atoll"].get("lastRollback"):
                return False
            # Green is the health record of this very boot, not of the one before it.
            last = self._last_boot(device)
            ident = f"{booted['atoll']['commit']}.{booted['atoll']['deploySerial']}"
            found.update(doc)
            return last.get("deployment") == ident and last.get("outcome") == "green"

        what = f"{device.name} updates itself to v{version}"
        if rolled_back:
            what = f"{device.name} takes the update, rolls back, runs v{version} again"
        changed = self.health_watch(device)
        d.wait_until(what, lambda: changed() and there(), 600 if d.fast else 900, every=0.2)
        return found

    def boots(self, device: Device) -> str:
        """The device's boots so far, from its health history: "green, red, red, …"."""
        done = self.demo.atoll(
            "health", "status", "--sysroot", str(device.sysroot), "--json", quiet=True
        )
        history = json.loads(done.stdout).get("history") or []
        return "boots " + ", ".join(str(h.get("outcome")) for h in history[-6:])

    def record_update(self, device: Device, what: str, before: tuple[int, int]) -> tuple[int, int]:
        """Note what the device's own update moved (its status's last transfer,
        by path) and added to its store, for the transfer report."""
        after = store_usage(device.sysroot)
        done = self.demo.atoll(
            "status", "--sysroot", str(device.sysroot), "--json", quiet=True, check=False
        )
        moved: dict[str, Any] = {}
        if done.returncode == 0:
            moved = json.loads(done.stdout)["status"]["atoll"].get("lastTransfer") or {}
        device.transfers.append(
            (what, {"filesTotal": None, "filesNew": after[0] - before[0],
                    "bytesFetched": moved.get("bytesMoved"), "bytesNew": after[1] - before[1],
                    "paths": moved.get("paths") or {}})
        )  # fmt: skip
        return after

    # --- 8 ------------------------------------------------------------------------------

    def transfer_step(self) -> str:
        from rich.table import Table

        d = self.demo
        d.section(
            "8",
            "What each device fetched",
            "From the results of atoll install, and for the devices' own updates from what "
            "their object stores gained: a store fetches only layers it lacks and writes only "
            "files it does not have.",
        )
        table = Table(title="Transfers")
        for column in ("device", "what", "files in image", "files new", "fetched", "how"):
            table.add_column(
                column, justify="left" if column in ("device", "what", "how") else "right"
            )
        totals = []
        shares = []
        for device in self.devices:
            fetched = 0
            install = None
            for what, result in device.transfers:
                total, got = result["filesTotal"], result["bytesFetched"]
                table.add_row(
                    device.name,
                    what,
                    "-" if total is None else f"{total:,}",
                    f"{result['filesNew']:,}",
                    f"{_size(result['bytesNew'])} new in store" if got is None else _size(got),
                    _paths(
                        result.get("paths") or (result.get("transfer") or {}).get("paths") or {}
                    ),
                )
                fetched += int(got if got is not None else result["bytesNew"])
                if install is None:
                    install = got
                elif got is not None and install:
                    shares.append(f"{device.name} {what}: {got / install:.0%}")
            totals.append(f"{device.name} {_size(fetched)}")
        d.console.print(table)
        d.say(
            "An update moves only what changed: ranges are the files fetched from changed "
            "layers, present the layers the device already had. Against the install: "
            + (", ".join(shares) or "-")
        )
        return "fetched in all: " + ", ".join(totals)


def _paths(paths: dict[str, Any]) -> str:
    """An update's transfer by path, short: "ranges 12 files, whole 1 layer, present 40"."""
    parts = []
    for name, row in paths.items():
        layers, files = int(row.get("layers", 0)), int(row.get("files", 0))
        if name == "present" and layers:
            parts.append(f"present {layers} layer{'s' * (layers != 1)}")
        elif name in ("ranges", "delta") and files:
            parts.append(f"{name} {files} file{'s' * (files != 1)}")
        elif name == "whole" and layers:
            parts.append(f"whole {layers} layer{'s' * (layers != 1)}")
    return ", ".join(parts) or "-"


def store_usage(sysroot: Path) -> tuple[int, int]:
    """Files and bytes in a device's object store."""
    files = size = 0
    for path in (sysroot / "atoll/store").rglob("*"):
        if path.is_file() and not path.is_symlink():
            files += 1
            size += path.stat().st_size
    return files, size


def atoll_argv(*args: str) -> list[str]:
    return atoll_argv_module("atoll", *args)


def atoll_argv_module(module: str, *args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", module, *args]


def lan_name(workdir: Path) -> str:
    """The demo's LAN: its namespaces are LAN-lan, LAN-dev1, LAN-dev2, LAN-client."""
    return "demo" + hashlib.sha256(str(workdir).encode()).hexdigest()[:6]


def remove_lan(workdir: Path) -> list[str]:
    """Delete the demo's network namespaces (members first); return their names."""
    prefix = f"{lan_name(workdir)}-"
    try:
        names = sorted(p.name for p in Path("/run/netns").iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []
    names.sort(key=lambda n: n.endswith("-lan"))
    removed = []
    for name in names:
        if run([find_tool("ip", "iproute2"), "netns", "delete", name], check=False).returncode == 0:
            removed.append(name)
    return removed


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
