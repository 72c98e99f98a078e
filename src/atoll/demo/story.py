"""The edge story, step by step: each step is a function of the demo that runs
the ``atoll`` commands a user would type and returns one line for the summary.

Where the pieces run (see docs/demo.md):

- the registry: ``docker-registry`` on 127.0.0.1, plain HTTP;
- each device: a sysroot under WORKDIR, booted with ``atoll device boot
  --host-network`` (systemd-nspawn, systemd as PID 1, the host's network): its
  own update timer (``atoll updates run``, policy ``apply``, every few seconds in
  the demo) pulls OS updates from the registry, checks their signatures with the
  device's trust policy, stages and reboots (see :meth:`Story.configure_updates`);
- each device's agents (the web workload and ``atoll failover run``) run on
  the host, beside the device, with a podman storage per device: the container
  device has no podman of its own.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.demo import basetree, osimage
from atoll.demo.framework import Demo, spinner
from atoll.demo.registry import answers, free_port, write_config
from atoll.run import base_environment, find_tool

OS_STAGE = "stage/edge-os"
OS_PROD = "prod/edge-os"
#: How often each device's update timer fires in the demo (hourly on a real device).
UPDATE_EVERY = "10s"


@dataclass
class Device:
    name: str
    sysroot: Path
    #: The socket-activated listener (what the failover master forwards to).
    web_port: int
    #: Where the web container itself listens, on the host's network.
    inner_port: int
    advert_port: int
    priority: int
    podman_env: dict[str, str] = field(default_factory=dict)
    #: (what, JSON result of install or upgrade) in order, for the transfer report.
    transfers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def units(self) -> Path:
        return self.sysroot.parent / "agents" / self.name / "units"

    @property
    def state_dir(self) -> Path:
        return runtime_dir(self.sysroot.parent) / self.name

    @property
    def console_log(self) -> Path:
        return self.sysroot.parent / "logs" / f"{self.name}-console.log"

    @property
    def failover_status(self) -> Path:
        return self.sysroot.parent / "agents" / self.name / "failover.json"


@dataclass
class Story:
    demo: Demo
    base_tree: Path | None
    cache: Path
    #: An apt sources.list line for the base image (default: the tree's own sources).
    apt_source: str | None = None
    registry: str = ""
    service: str = ""
    devices: list[Device] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def interval(self) -> float:
        return 0.3 if self.demo.fast else 1.0

    def os_ref(self, repo: str, tag: str) -> str:
        return f"docker://{self.registry}/{repo}:{tag}"

    # --- 1 ------------------------------------------------------------------------------

    def registry_step(self) -> str:
        d = self.demo
        d.section(
            "1",
            "A registry on loopback",
            "The real CNCF Distribution registry (Debian's docker-registry) holds every "
            "image of the story: the OS in a stage and a prod repository, and the workload.",
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
        return f"docker-registry on {self.registry}"

    # --- 2 ------------------------------------------------------------------------------

    def os_images_step(self) -> str:
        d = self.demo
        d.section(
            "2",
            "OS images v1, v2, v3: built from blueprints, promoted, signed",
            "Image Builder blueprints on a Debian bookworm base; podman runs the build steps "
            "and atoll adds itself and its units. v2 adds a package and a required health "
            "check that fails; v3 fixes the check. v1 is promoted to prod and signed.",
        )
        tree = self.base_tree
        if tree is None:
            found = basetree.cached_tree(self.cache)
            if found is None:
                d.say(f"debootstrap of Debian bookworm, once (kept in {self.cache})")
                with spinner(d.console, "  debootstrap bookworm (about a minute)"):
                    found = basetree.ensure_tree(self.cache, basetree.demo_recipe())
            tree = found
        d.say(f"base tree: {tree}")
        layout = d.workdir / "images"
        with spinner(d.console, "  writing the base image (its layer is packed once)"):
            osimage.write_base(layout, tree, self.cache, self.apt_source)
        blueprints = d.workdir / "blueprints"
        blueprints.mkdir(exist_ok=True)
        for v in osimage.versions():
            path = blueprints / f"edge-os-{v.version}.toml"
            path.write_text(v.blueprint)
            d.say(f"v{v.version}: {v.note}")
            with spinner(d.console, f"  building {v.version}"):
                built = d.atoll(
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
                    # --fast (the test suite's run) keeps podman's layers: rechunking
                    # is tested on its own, and costs a minute a build here.
                    *(["--no-rechunk"] if d.fast else []),
                    "--workdir",
                    str(d.workdir / "build"),
                    "--json",
                )
            result = built.json()
            self.digests[v.version] = str(result["digest"])
            d.say(f"  {result['digest']} in {built.seconds:.0f} s")
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

    def promote(self, version: str) -> None:
        """Promote a stage version to prod as VERSION, sign it for prod's stable tag, then
        move stable to it: the devices, which poll stable, never see it unsigned."""
        d = self.demo
        for tag in (version, "stable"):
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
            "Two edge devices, installed from v1 and booted",
            "Each device is a sysroot (object store, deployments, boot entries, /var) booted "
            "with systemd-nspawn: systemd runs as PID 1 and runs atoll's health checks.",
        )
        for number, priority in ((1, 150), (2, 100)):
            name = f"dev{number}"
            device = Device(
                name,
                d.workdir / name,
                web_port=free_port(),
                inner_port=free_port(),
                advert_port=_free_udp_port(),
                priority=priority,
            )
            self.devices.append(device)
            done = d.atoll(
                "install",
                "to-filesystem",
                str(device.sysroot),
                "--source",
                f"{self.registry}/{OS_PROD}:stable",
                "--allow-no-kernel",
                "--policy",
                str(self.policy),
                "--json",
                progress=f"install {name}",
            )
            result = done.json()
            device.transfers.append(("install v1.0", result))
            d.say(
                f"{name}: {result['filesTotal']} files, {result['filesNew']} new in its store, "
                f"{_size(result['bytesFetched'])} fetched"
            )
            self.configure_updates(device)
        d.say(
            "each device updates itself: /etc/atoll/updates.toml says policy = apply, its "
            "trust policy wants prod/edge-os signed by the release key, and its update timer "
            f"runs every {UPDATE_EVERY} (hourly on a real device)"
        )
        self.boot_all()
        out = d.atoll("status", "--sysroot", str(self.devices[0].sysroot))
        d.show(out.stdout)
        return "dev1 and dev2 on v1.0, booted green"

    def configure_updates(self, device: Device) -> None:
        """What an administrator puts in the device's /etc for it to update itself:
        the update policy, the registry (plain HTTP on loopback), the trust policy
        with the release key, and (for the demo) a timer that fires every few seconds.
        Local /etc changes are carried into every later deployment."""
        (root,) = device.sysroot.glob("atoll/deploy/*/deploy/*.0")
        etc = root / "etc"
        key = "/etc/containers/keys/release.pub"
        policy = {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {
                    f"{self.registry}/{OS_PROD}": [{"type": "sigstoreSigned", "keyPath": key}]
                }
            },
        }
        files = {
            "atoll/updates.toml": 'policy = "apply"\n',
            "containers/registries.conf": (
                f'[[registry]]\nlocation = "{self.registry}"\ninsecure = true\n'
            ),
            "containers/policy.json": json.dumps(policy, indent=2) + "\n",
            key.removeprefix("/etc/"): (self.demo.workdir / "keys/release.pub").read_text(),
            "systemd/system/atoll-fetch-apply-updates.timer.d/demo.conf": (
                f"[Timer]\nOnActiveSec=5s\nOnUnitActiveSec={UPDATE_EVERY}\n"
                "RandomizedDelaySec=0\nAccuracySec=1s\n"
            ),
            # The demo's images carry no kernel: the devices boot them as containers.
            "systemd/system/atoll-fetch-apply-updates.service.d/demo.conf": (
                "[Service]\nExecStart=\nExecStart=/usr/bin/atoll updates run --sysroot /sysroot "
                "--max-wait 90m --allow-no-kernel\n"
            ),
        }
        for name, text in files.items():
            path = etc / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

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
            d.wait_until(
                f"{device.name} boots green",
                lambda device=device: self._green(device, before[device.name]),  # type: ignore[misc]
                180 if d.fast else 300,
            )
            d.say(
                f"{device.name}: booted, health checks green "
                f"{time.monotonic() - started:.1f} s after the start"
            )

    def _start_boot(self, device: Device) -> None:
        d = self.demo
        d.start(
            f"{device.name}-boot",
            atoll_argv(
                "device",
                "boot",
                "--sysroot",
                str(device.sysroot),
                "--keep-running",
                "--host-network",
                "--timeout",
                "3600",
                "--console-log",
                str(device.console_log),
            ),
            shown=[
                "atoll",
                "device",
                "boot",
                "--sysroot",
                str(device.sysroot),
                "--keep-running",
                "--host-network",
            ],
            stop="int",
        )

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

    def os_upgrade_step(self) -> str:
        d = self.demo
        d.section(
            "7",
            "OS upgrade to v2, by the devices themselves: a red boot, three attempts, rollback",
            "v2 is promoted to prod:stable. Each device's update timer finds it, checks its "
            "signature, stages it and reboots. Its required health check fails, the boot "
            "counter runs out after three boots and the bootloader falls back to v1; atoll "
            "makes the rollback permanent, says why, and does not take v2 again.",
        )
        usage = {device.name: _store_usage(device.sysroot) for device in self.devices}
        self.promote("2.0")
        reasons = []
        for device in self.devices:
            doc = self.wait_for_version(device, "1.0", rolled_back=True)
            reasons.append(doc["atoll"]["lastRollback"]["reason"])
            d.say(f"{device.name}: {self._boots(device)}")
        human = d.atoll("status", "--sysroot", str(self.devices[0].sysroot))
        d.show(human.stdout)
        for device in self.devices:
            usage[device.name] = self._record_growth(device, "update to v2.0", usage[device.name])

        d.say("[bold]v3 fixes the check[/]")
        self.promote("3.0")
        for device in self.devices:
            doc = self.wait_for_version(device, "3.0")
            booted = doc["booted"]
            d.say(f"{device.name}: {self._boots(device)}")
            root = (
                device.sysroot
                / "atoll/deploy"
                / booted["atoll"]["stateroot"]
                / "deploy"
                / f"{booted['atoll']['commit']}.{booted['atoll']['deploySerial']}"
            )
            listing = d.command("ls", "-l", str(root / osimage.PACKAGE), note="the new package")
            d.show(listing.stdout)
            self._record_growth(device, "update to v3.0", usage[device.name])
        name = reasons[0].get("name") if isinstance(reasons[0], dict) else reasons[0]
        return (
            f"each device updated itself: v2.0 rolled back on both ({name} failed); "
            "v3.0 booted green"
        )

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
        d.wait_until(what, there, 600 if d.fast else 900, every=1.0)
        return found

    def _boots(self, device: Device) -> str:
        """The device's boots so far, from its health history: "green, red, red, …"."""
        done = self.demo.atoll(
            "health", "status", "--sysroot", str(device.sysroot), "--json", quiet=True
        )
        history = json.loads(done.stdout).get("history") or []
        return "boots " + ", ".join(str(h.get("outcome")) for h in history[-6:])

    def _record_growth(self, device: Device, what: str, before: tuple[int, int]) -> tuple[int, int]:
        """Note what the device's own update added to its store, for the transfer report."""
        after = _store_usage(device.sysroot)
        device.transfers.append(
            (what, {"filesTotal": None, "filesNew": after[0] - before[0],
                    "bytesFetched": None, "bytesNew": after[1] - before[1]})
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
        for column in ("device", "what", "files in image", "files new", "fetched"):
            table.add_column(column, justify="left" if column in ("device", "what") else "right")
        totals = []
        for device in self.devices:
            fetched = 0
            for what, result in device.transfers:
                # The devices' own updates: what their store gained (counted on the host).
                total, got = result["filesTotal"], result["bytesFetched"]
                table.add_row(
                    device.name,
                    what,
                    "-" if total is None else f"{total:,}",
                    f"{result['filesNew']:,}",
                    f"{_size(result['bytesNew'])} new in store" if got is None else _size(got),
                )
                fetched += int(got if got is not None else result["bytesNew"])
            totals.append(f"{device.name} {_size(fetched)}")
        d.console.print(table)
        return "fetched in all: " + ", ".join(totals)


def runtime_dir(workdir: Path) -> Path:
    """Where the supervisors' control sockets and the devices' podman storages go:
    under WORKDIR when its path is short, else in /run. A Unix socket's path holds at
    most 107 bytes; and with a storage under a long path podman was seen to take about
    20 s to report that a container had exited, longer than the demo's watch window."""
    if len(str(workdir)) <= 48:
        return workdir / "run"
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:12]
    return Path("/run") / f"atoll-demo-{digest}"


def _store_usage(sysroot: Path) -> tuple[int, int]:
    """Files and bytes in a device's object store."""
    files = size = 0
    for path in (sysroot / "atoll/store").rglob("*"):
        if path.is_file() and not path.is_symlink():
            files += 1
            size += path.stat().st_size
    return files, size


def atoll_argv(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "atoll", *args]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
