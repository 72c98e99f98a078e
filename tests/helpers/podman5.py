"""A host with systemd and podman 5: Debian trixie booted under systemd-nspawn.

Debian trixie ships podman 5.4.2 (the podman of the workload issue's reference
figures) and systemd 257.  The tree is debootstrapped once and cached beside
the other Debian trees (helpers.debian); each boot is read-only with ``/var``
on a tmpfs, so a boot leaves the cache as it was.  The container shares this
machine's network, so podman in it reaches the tests' registries on loopback
and the host reaches its containers' ports.

What the container needs so podman can run containers under systemd in it:

* the unified cgroup hierarchy (``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``): this
  machine's controllers are all on cgroup v1, which nspawn hands to a
  container read-only, so crun could not make cgroups there;
* no pids limit (``pids_limit = 0``): that hierarchy has no controllers;
* the ``bpf`` and ``keyctl`` system calls and every capability, which nspawn's
  filter withholds by default and crun uses for device rules and keyrings;
* the host's network for its containers (``Network=host``): a network of
  podman's own needs sysctls that are read-only in the container.

atoll itself is bound read-only from this checkout into
``/usr/lib/python3/dist-packages/atoll`` and runs as ``python3 -m atoll`` with
trixie's python3 and python3-httpx.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import atoll
from atoll.demo import basetree
from atoll.device.nspawn import child_pids
from helpers import debian

SUITE = "trixie"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "podman",
    "crun",
    "conmon",
    "netavark",
    "catatonit",  # the infra containers of pods (.kube) run it
    "python3",
    "python3-httpx",
)
#: Units a boot here does not need.
MASKED = (
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "console-getty.service",
    "getty.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "podman-auto-update.timer",
    "podman-clean-transient.service",
)
CONTAINERS_CONF = """\
[containers]
# The container's cgroup tree (the unified hierarchy) has no pids controller.
pids_limit = 0
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
# No network sysctls (ping_group_range): /proc/sys is read-only here, and a
# container in a network namespace of its own, such as the service container of
# a .kube, could not start.
default_sysctls = []
"""
RECIPE: dict[str, object] = {
    "suite": SUITE,
    "variant": "minbase",
    "include": list(PACKAGES),
    "mirror": basetree.MIRROR,
    "prepare": "podman5-2",
}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _prepare(root: Path) -> None:
    system = root / "etc/systemd/system"
    for unit in MASKED:
        (system / unit).unlink(missing_ok=True)
        (system / unit).symlink_to("/dev/null")
    (root / "etc/hostname").write_text("podman5\n")
    # Where this checkout's atoll is bound (a read-only root cannot make the mount point).
    (root / "usr/lib/python3/dist-packages/atoll").mkdir(parents=True)


TREE = debian.TreeRecipe(
    RECIPE,
    lambda target: basetree.debootstrap(target, PACKAGES, suite=SUITE),
    _prepare,
)


def _descendants(pid: int) -> list[int]:
    """Every process below *pid*, parents before children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        children = child_pids(todo.pop())
        found += children
        todo += children
    return found


def unavailable() -> str | None:
    """Why the host cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make deps)"
    return None


def ensure_tree(cache: Path | None = None) -> Path:
    """The trixie tree (debootstrapped the first time, about a minute), its rootfs."""
    return debian.ensure_debian_tree(cache, TREE).rootfs


class SystemdHost:
    """The trixie tree booted under systemd-nspawn; :meth:`run` runs a command in it.

    *registries*: hosts podman in it may reach over plain HTTP.
    """

    def __init__(
        self,
        rootfs: Path,
        work: Path,
        registries: tuple[str, ...] = (),
        *,
        netns: Path | None = None,
        binds: tuple[tuple[Path, str], ...] = (),
    ) -> None:
        """*netns*: a network namespace to boot in (a LAN of its own, atoll.device.netns)
        instead of this machine's network; *binds*: more (HOST, PATH) read-only binds."""
        self.rootfs = rootfs
        self.netns, self.binds = netns, binds
        self.work = work
        self.units = work / "units"
        self.units.mkdir(parents=True)
        self.conf = work / "containers"
        shutil.copytree(rootfs / "etc/containers", self.conf, symlinks=True)
        (self.conf / "systemd").mkdir(exist_ok=True)
        (self.conf / "containers.conf").write_text(CONTAINERS_CONF)
        drop_ins = self.conf / "registries.conf.d"
        drop_ins.mkdir(exist_ok=True)
        (drop_ins / "tests.conf").write_text(
            "".join(f'[[registry]]\nlocation = "{r}"\ninsecure = true\n' for r in registries)
        )
        self.console = work / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def start(self, timeout: float = 120) -> None:
        package = Path(atoll.__file__).resolve().parent
        argv = [
            "setpriv", "--pdeathsig=SIGTERM", "--",
            "systemd-nspawn", "--boot", f"--directory={self.rootfs}",
            "--keep-unit", "--register=no", f"--machine=atoll-{os.getpid()}",
            "--read-only", "--volatile=state", "--console=read-only",
            "--capability=all", "--system-call-filter=bpf keyctl add_key request_key",
            f"--bind-ro={self.conf}:/etc/containers",
            f"--bind-ro={self.units}:/etc/containers/systemd",
            f"--bind-ro={package}:/usr/lib/python3/dist-packages/atoll",
            *(f"--bind-ro={host}:{inside}" for host, inside in self.binds),
            *([f"--network-namespace-path={self.netns}"] if self.netns else []),
        ]  # fmt: skip
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.console.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.console_tail()}")
            if not self.leader:
                self.leader = next(iter(child_pids(self.proc.pid)), 0)  # the container's init
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the {SUITE} host did not finish booting in {timeout:g} s")

    def console_tail(self, lines: int = 30) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def run(
        self, *argv: str, check: bool = True, timeout: float = 300, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """*argv* in the host, with a clean environment (none of this process's);
        *input_text* is its stdin.  A command still running after *timeout* seconds
        gets SIGQUIT (a Go program such as podman prints every goroutine's stack on
        it) and the call fails with the tail of what it wrote."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--",
               "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", *argv]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            # nsenter forks into the container's PID namespace: signal the command itself.
            for pid in _descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
            try:
                out, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            print(f"--- {' '.join(argv)}: stderr after SIGQUIT ---\n{err}")
            raise RuntimeError(
                f"{' '.join(argv)} was still running after {timeout:g} s; "
                f"its stderr ends: {err.strip()[-1500:]}"
            ) from None
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {err.strip()[-800:]}")
        return result

    def timed(self, *argv: str) -> float:
        started = time.perf_counter()
        self.run(*argv)
        return time.perf_counter() - started

    def journal(self, unit: str | None = None, lines: int = 30) -> str:
        which = ["-u", unit] if unit else []
        return self.run("journalctl", "--no-pager", "-n", str(lines), *which, check=False).stdout

    def start_units(self, units: dict[str, str]) -> None:
        """Write the Quadlet files (name -> text), reload systemd, start their services."""
        for name, text in units.items():
            (self.units / name).write_text(text)
        self.run("systemctl", "daemon-reload")
        services = [name.rsplit(".", 1)[0] + ".service" for name in units]
        started = self.run("systemctl", "start", *services, check=False)
        if started.returncode != 0:
            raise RuntimeError(f"systemctl start {' '.join(services)} failed:\n{self.journal()}")

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
