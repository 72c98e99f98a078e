"""podman 5 beside atoll in bench/autoupdate: Debian trixie's podman under systemd.

Debian trixie ships podman 5.4.2, the version of the issue's reference figures.
The benchmark boots a trixie tree with systemd-nspawn (the container-boot
device's way of running systemd here) and runs podman's own ``auto-update``
inside it, against the benchmark's registry on this machine's loopback (the
container shares the machine's network), in the same run as atoll's figures.

What the container needs so podman can run containers under systemd in it:

* the unified cgroup hierarchy (``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``): this
  machine's controllers are all on cgroup v1, which nspawn hands to a
  container read-only, so crun could not make cgroups there;
* no pids limit (``pids_limit = 0``): the unified hierarchy has no controllers;
* the ``bpf`` and ``keyctl`` system calls and every capability, which nspawn's
  filter withholds by default and crun uses for device rules and keyrings.

The tree is built once with debootstrap and kept under
``$ATOLL_BENCH_CACHE`` (default ``/var/cache/atoll-bench``); each run boots it
read-only with ``/var`` on a tmpfs, so runs leave it as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "podman", "crun", "conmon", "netavark")
#: Units a benchmark boot does not need.
MASKED = (
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "console-getty.service",
    "getty.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "podman-auto-update.timer",
)
CONTAINERS_CONF = """\
[containers]
# The container's cgroup tree (the unified hierarchy) has no pids controller.
pids_limit = 0
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
"""
MACHINE = "atoll-bench-podman5"


def cache_root() -> Path:
    return Path(os.environ.get("ATOLL_BENCH_CACHE") or "/var/cache/atoll-bench")


def unavailable() -> str | None:
    """Why podman 5 cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make deps)"
    return None


def ensure_tree() -> Path:
    """The trixie tree with podman, debootstrapped once (a few minutes) and cached."""
    recipe = {"suite": SUITE, "mirror": MIRROR, "include": list(PACKAGES), "masked": list(MASKED)}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / f"debian-{SUITE}-podman-{key}"
    if (final / "recipe.json").is_file():
        return final / "rootfs"
    final.parent.mkdir(parents=True, exist_ok=True)
    build = final.with_name(f".build-{final.name}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    print(f"(building the Debian {SUITE} tree with podman 5 in {final}, once)", flush=True)
    rootfs = build / "rootfs"
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
         SUITE, str(rootfs), MIRROR],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    system = rootfs / "etc/systemd/system"
    for unit in MASKED:
        (system / unit).unlink(missing_ok=True)
        (system / unit).symlink_to("/dev/null")
    (rootfs / "etc/hostname").write_text("podman5\n")
    (build / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    build.rename(final)
    return final / "rootfs"


class Podman5Host:
    """The trixie tree booted under systemd-nspawn; :meth:`run` runs a command in it."""

    def __init__(self, rootfs: Path, work: Path, registry: str) -> None:
        self.rootfs = rootfs
        self.work = work
        self.units = work / "units"
        self.units.mkdir(parents=True)
        self.conf = work / "containers"
        shutil.copytree(rootfs / "etc/containers", self.conf, symlinks=True)
        (self.conf / "systemd").mkdir(exist_ok=True)
        (self.conf / "containers.conf").write_text(CONTAINERS_CONF)
        drop_ins = self.conf / "registries.conf.d"
        drop_ins.mkdir(exist_ok=True)
        (drop_ins / "bench.conf").write_text(
            f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def start(self, timeout: float = 120) -> None:
        argv = [
            "setpriv", "--pdeathsig=SIGTERM", "--",
            "systemd-nspawn", "--boot", f"--directory={self.rootfs}",
            "--keep-unit", "--register=no", f"--machine={MACHINE}",
            "--read-only", "--volatile=state", "--console=read-only",
            "--capability=all", "--system-call-filter=bpf keyctl add_key request_key",
            f"--bind-ro={self.conf}:/etc/containers",
            f"--bind-ro={self.units}:/etc/containers/systemd",
        ]  # fmt: skip
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        log = (self.work / "console.log").open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: see {self.work / 'console.log'}")
            if not self.leader:
                self.leader = _first_child(self.proc.pid)
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the {SUITE} container did not finish booting in {timeout:g} s")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def timed(self, *argv: str) -> float:
        started = time.perf_counter()
        proc = self.run(*argv, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
        return seconds

    def start_units(self, units: dict[str, str]) -> None:
        """Write the Quadlet files (name -> text), reload systemd, start their services."""
        for name, text in units.items():
            (self.units / name).write_text(text)
        self.run("systemctl", "daemon-reload")
        services = [name.rsplit(".", 1)[0] + ".service" for name in units]
        started = self.run("systemctl", "start", *services, check=False)
        if started.returncode != 0:
            journal = self.run("journalctl", "--no-pager", "-n", "20", check=False).stdout
            raise RuntimeError(f"systemctl start {' '.join(services)} failed:\n{journal}")

    def stop_units(self, names: list[str]) -> None:
        self.run("systemctl", "stop", *[n.rsplit(".", 1)[0] + ".service" for n in names])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container to power off
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _first_child(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return 0
    children = text.split()
    return int(children[0]) if children else 0
