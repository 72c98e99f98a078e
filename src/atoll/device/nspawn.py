"""The container-boot device: a deployment booted by systemd-nspawn, systemd as PID 1.

What the container sees (the default; see :func:`nspawn_command`)::

    /        ROOT, the deployment directory          writable (so /etc is)
    /usr     ROOT/usr bound over itself              read-only (readonly_usr=True)
    /var     VAR, the stateroot's shared /var        writable
    PATH     HOST for each (HOST, PATH) in binds     writable
    /tmp, /run                                       tmpfs, made by nspawn
    network  loopback only (network="private", --private-network); the host's
             (network="host": the device reaches a registry on the host's
             loopback); or a network namespace made beforehand (network=PATH,
             e.g. /run/netns/lan1-dev1 from atoll.device.netns: a LAN of its own)

Arguments after ``--`` become the arguments of the container's systemd, which in
a container reads them in place of the kernel command line (``systemd.unit=``,
``systemd.log_level=``, ...); ``systemd.journald.forward_to_console=1`` always
comes first, so the journal is on the console next to systemd's status lines.

How a boot ended is read from systemd-nspawn's exit status, which is the status
of the container's PID 1:

    =====================  ==========  ============================================
    0                      poweroff    systemd powered the container off
    133                    reboot      systemd asked for a reboot (the status
                                       systemd-nspawn@.service restarts on)
    anything else          failed      ``systemctl exit N``, a crash, or nspawn
                                       refused to start (its message is in the log)
    the deadline passed    timeout     the container was killed
    =====================  ==========  ============================================

Stopping: on a timeout systemd-nspawn gets SIGTERM. It was started with
``--kill-signal=SIGKILL``, so it kills the container's PID 1, the kernel then
kills every process in the container's PID namespace, and nspawn unmounts the
container's mount namespace and removes its files under /run/systemd/nspawn
before it exits. Killing nspawn itself first would orphan the container (its
init runs in a session of its own), so only if nspawn has not exited after a
grace period are the container's init and nspawn's process group SIGKILLed.
nspawn runs under ``setpriv --pdeathsig SIGTERM``: if the process that started
it dies, the container goes down the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, TypedDict, Unpack

from atoll.device.cgroup import cgroup_of_its_own
from atoll.device.console import run_with_console
from atoll.errors import ContainerBootError, InvalidInputError
from atoll.run import Process, TimeoutExpired, base_environment, dies_with_caller, find_tool

log = logging.getLogger(__name__)

#: The exit status systemd-nspawn returns when the container asked to reboot.
EXIT_REBOOT = 133
#: Always passed to the container's systemd, before the caller's command line.
BASE_CMDLINE = ("systemd.journald.forward_to_console=1",)

_TAIL_LINES = 40
_STOP_GRACE = 10.0
_READER_GRACE = 5.0
_MACHINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: What a device that runs containers itself needs besides nspawn's defaults
#: (``containers=True``): see :func:`nspawn_command`.
CONTAINERS_OPTIONS = ("--capability=all", "--system-call-filter=bpf keyctl add_key request_key")
#: ... and in nspawn's environment: the unified cgroup hierarchy, which crun can
#: write to even where the host's controllers are on cgroup v1 (read-only inside).
CONTAINERS_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
#: ``network=`` values other than the path of a network namespace.
NETWORK_PRIVATE = "private"
NETWORK_HOST = "host"


def parse_network(text: str) -> str:
    """``private``, ``host``, or a network namespace: a name under /run/netns
    (``ip netns add NAME``) or the absolute path of one; the namespace must exist."""
    if text in (NETWORK_PRIVATE, NETWORK_HOST):
        return text
    if "/" in text and not text.startswith("/"):
        raise InvalidInputError(f"network {text!r}: give private, host, a namespace name or path")
    path = Path(text) if text.startswith("/") else Path("/run/netns") / text
    if not path.exists():
        raise InvalidInputError(
            f"network namespace {path} does not exist",
            hint=f"make it first, e.g. ip netns add {path.name}",
        )
    return str(path)


class DeviceBootOutcome(StrEnum):
    POWEROFF = "poweroff"
    REBOOT = "reboot"
    FAILED = "failed"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class ContainerBoot:
    outcome: DeviceBootOutcome
    #: systemd-nspawn's exit status (negative: killed by that signal).
    exit_code: int
    #: Seconds from starting systemd-nspawn until it exited.
    duration: float
    #: The last lines of the console, carriage returns removed.
    console_tail: str


def outcome_of(exit_code: int) -> DeviceBootOutcome:
    if exit_code == 0:
        return DeviceBootOutcome.POWEROFF
    if exit_code == EXIT_REBOOT:
        return DeviceBootOutcome.REBOOT
    return DeviceBootOutcome.FAILED


def nspawn_command(
    root: Path,
    *,
    var: Path,
    machine: str,
    binds: Sequence[tuple[Path, str]] = (),
    readonly_usr: bool = True,
    kernel_cmdline: str = "",
    nspawn: str = "systemd-nspawn",
    network: str = NETWORK_PRIVATE,
    containers: bool = False,
) -> list[str]:
    """The systemd-nspawn command line that boots *root* (checked, not run).

    *containers*: the device runs containers itself (podman under its own
    systemd), which needs every capability and the ``bpf``, ``keyctl``,
    ``add_key`` and ``request_key`` system calls nspawn withholds (crun uses
    them for device rules and keyrings); run it with :data:`CONTAINERS_ENV`."""
    if not _MACHINE.fullmatch(machine):
        raise InvalidInputError(
            f"machine name {machine!r} is not valid: use 1-64 letters, digits, '.', '_', '-'"
        )
    root, var = root.absolute(), var.absolute()
    for path in (root, var, *(host for host, _ in binds)):
        _check_bindable(path)
    argv = [
        nspawn,
        "--boot",
        f"--directory={root}",
        # Neither needs systemd on the host: stay in the caller's cgroup, skip machined.
        "--keep-unit",
        "--register=no",
        f"--machine={machine}",
        *_network_options(network),
        *(CONTAINERS_OPTIONS if containers else ()),
        "--console=read-only",
        "--kill-signal=SIGKILL",
        "--setenv=SYSTEMD_COLORS=0",
        f"--bind={var}:/var",
    ]
    if readonly_usr:
        argv.append(f"--bind-ro={root / 'usr'}:/usr")
    for host, inside in binds:
        if not inside.startswith("/") or ":" in inside:
            raise InvalidInputError(f"bind target {inside!r} must be an absolute path without ':'")
        argv.append(f"--bind={host.absolute()}:{inside}")
    try:
        extra = shlex.split(kernel_cmdline)
    except ValueError as exc:
        raise InvalidInputError(f"kernel command line {kernel_cmdline!r}: {exc}") from None
    return [*argv, "--", *BASE_CMDLINE, *extra]


def _network_options(network: str) -> list[str]:
    if network == NETWORK_PRIVATE:
        return ["--private-network"]
    if network == NETWORK_HOST:
        return []
    if not network.startswith("/") or ":" in network:
        raise InvalidInputError(
            f"network {network!r}: give private, host or the absolute path of a namespace"
        )
    # The device manages its own addresses in its namespace (a VIP moved by keepalived).
    return [f"--network-namespace-path={network}", "--capability=CAP_NET_ADMIN"]


class BootOptions(TypedDict, total=False):
    """The optional arguments of :func:`nspawn_command` a boot passes on."""

    binds: Sequence[tuple[Path, str]]
    readonly_usr: bool
    kernel_cmdline: str
    network: str
    containers: bool


def boot_container(
    root: Path,
    *,
    var: Path,
    machine: str,
    timeout: float,
    console_log: Path | None = None,
    **options: Unpack[BootOptions],
) -> ContainerBoot:
    """Boot the deployment at *root* until it powers off, reboots, fails or *timeout* passes.

    The console (systemd's status lines, the journal, nspawn's own messages) is
    appended to *console_log* as it comes.
    """
    argv = prepare_boot(root, var=var, machine=machine, timeout=timeout, **options)
    log.debug("boot: %s", shlex.join(argv))
    with cgroup_of_its_own(machine) as enter:
        code, timed_out, duration, console, _pid = run_with_console(
            argv,
            timeout=timeout,
            console_log=console_log,
            console=_Console,
            stop=_stop,
            label=f"boot: {machine}",
            env=base_environment(CONTAINERS_ENV) if options.get("containers") else None,
            preexec=enter,
        )
    outcome = DeviceBootOutcome.TIMEOUT if timed_out else outcome_of(code)
    log.debug("boot: %s ended: %s (exit %d) after %.1f s", machine, outcome, code, duration)
    return ContainerBoot(outcome, code, duration, console.tail())


def prepare_boot(
    root: Path, *, var: Path, machine: str, timeout: float, **options: Unpack[BootOptions]
) -> list[str]:
    """Check everything a boot of *root* needs that can be known before it
    starts (the tree, the options, the programs) and return the command; writes
    nothing, so a caller can check before it counts a boot attempt."""
    _check_tree(root, var)
    if timeout <= 0:
        raise InvalidInputError(f"boot timeout must be positive, not {timeout}")
    nspawn = find_tool("systemd-nspawn", "systemd-container")
    return dies_with_caller(
        nspawn_command(root, var=var, machine=machine, nspawn=nspawn, **options)
    )


def _check_tree(root: Path, var: Path) -> None:
    if not root.is_dir():
        raise ContainerBootError(f"{root}: no such directory to boot")
    if root.resolve() == Path("/"):
        raise ContainerBootError("refusing to boot the host's own root directory")
    if not (root / "usr/lib/systemd/systemd").exists():
        raise ContainerBootError(
            f"{root} has no usr/lib/systemd/systemd: only a tree with systemd boots as a container",
            hint="install systemd and systemd-sysv in the image",
        )
    if not var.is_dir():
        raise ContainerBootError(f"{var}: no such directory to bind as /var")


def _check_bindable(path: Path) -> None:
    # nspawn splits --bind at ':'; it cannot name such a path.
    if ":" in str(path):
        raise InvalidInputError(f"{path}: a path with ':' cannot be bound into a container")


def _stop(proc: Process) -> int:
    """End nspawn and its container; see the module docstring for the order."""
    init = child_pids(proc.pid)
    _signal(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=_STOP_GRACE)
    except TimeoutExpired:
        pass
    log.warning("systemd-nspawn (pid %d) ignored SIGTERM; killing the container", proc.pid)
    for pid in {*init, *child_pids(proc.pid)}:
        _signal(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is *pid* (the container's init is nspawn's child)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; fields follow the last ')'.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class _Console:
    """Copies the console to the log as it comes and keeps its last lines.

    A pty ends lines with CR LF (systemd even writes CR CR LF) and redraws status
    lines with a lone CR: runs of CR before LF are dropped, a lone CR becomes LF.
    """

    def __init__(self, stream: IO[bytes], sink: IO[bytes] | None) -> None:
        self._stream = stream
        self._sink = sink
        self._lines: deque[bytes] = deque(maxlen=_TAIL_LINES)
        self._partial = b""
        self._pending_cr = b""
        self._thread = threading.Thread(target=self._pump, name="nspawn-console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno()
        while chunk := os.read(fd, 65536):
            self._feed(chunk)
        self._feed(b"", final=True)

    def _feed(self, chunk: bytes, *, final: bool = False) -> None:
        data = self._pending_cr + chunk
        stripped = data.rstrip(b"\r")
        self._pending_cr = b"" if final else data[len(stripped) :]
        if final:
            stripped = data
        text = re.sub(rb"\r+\n", b"\n", stripped).replace(b"\r", b"\n")
        if self._sink is not None and text:
            self._sink.write(text)
            self._sink.flush()
        *complete, self._partial = (self._partial + text).split(b"\n")
        self._lines.extend(complete)

    def close(self) -> None:
        self._thread.join(_READER_GRACE)
        if self._thread.is_alive():
            # Something in the container still holds the pipe; closing it under the
            # reading thread could hand the descriptor number to another file.
            log.warning("the container's console is still open after nspawn exited")
            return
        self._stream.close()

    def tail(self) -> str:
        lines = [*self._lines, self._partial] if self._partial else list(self._lines)
        return "\n".join(line.decode(errors="replace") for line in lines[-_TAIL_LINES:])
