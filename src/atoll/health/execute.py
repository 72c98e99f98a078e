"""Running one check script: its own process group, a deadline, a bounded tail of output.

This does not go through :func:`atoll.run.run`, which runs tools whose output
atoll needs in full: a check is a user's program that may hang, fork children
that outlive it, or print without end.  So:

* The script starts a new session (``setsid``): it and every child it starts
  share one process group, which is signalled as a whole.
* At the deadline the group gets SIGTERM, and SIGKILL :data:`KILL_GRACE`
  seconds later.  When the script exits by itself, what is left of its group
  (``sleep 1000 &``) is SIGKILLed: a check cannot leave processes behind, as a
  systemd oneshot service cannot.  A child that starts a session of its own
  (``setsid``, a double-forking daemon) escapes this; there are no cgroups here.
* stdout and stderr go to one pipe, read as they come; what is kept is the
  first :data:`HEAD_LINES` lines (at most :data:`HEAD_BYTES` bytes: where a
  script says why it fails) and the last lines, :data:`TAIL_LINES` lines and
  :data:`TAIL_BYTES` bytes of it in all, with a line :data:`LEFT_OUT`
  between the two where output was left out.
* stdin is ``/dev/null``; the environment is exactly what the caller gives.

With a :class:`Sandbox` whose ``chroot`` is set, the child makes itself a
private mount namespace (``unshare(CLONE_NEWNS)``, ``/`` made private so that
nothing propagates back to the host), bind-mounts the host's ``/dev`` on
``ROOT/dev`` and the requested host directories on theirs, mounts ``proc`` on
``ROOT/proc`` (each only if the directory exists in ROOT), and ``chroot``\\ s
into ROOT.  The mounts go away with the script's last process.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import selectors
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import ToolMissingError
from atoll.run import PIPE, STDOUT, Process, SubprocessError, spawn

log = logging.getLogger(__name__)

TAIL_BYTES = 4096
TAIL_LINES = 40
HEAD_BYTES = 1024
HEAD_LINES = 10
#: The line between the first and the last lines of a long output.
LEFT_OUT = "[…]"
#: Seconds between SIGTERM and SIGKILL for a script past its deadline.
KILL_GRACE = 2.0
#: Seconds to wait for the pipe to close once the script and its group are gone.
_DRAIN = 1.0
#: How often to look for the script's exit where there are no pidfds.
_POLL = 0.05

_CLONE_NEWNS = 0x00020000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


@dataclass(frozen=True)
class Sandbox:
    """Where a script runs: *root* (``/`` or a tree to chroot into) and its mounts."""

    root: Path
    chroot: bool
    #: (path inside the root, host directory) to bind-mount before the chroot.
    binds: tuple[tuple[str, Path], ...] = ()
    #: Mount a fresh ``proc`` on ``ROOT/proc`` and bind the host's ``/dev`` on
    #: ``ROOT/dev``, each when that directory exists.
    system_mounts: bool = True


@dataclass(frozen=True)
class Execution:
    """How one run of a script ended."""

    #: The exit status, ``128 + N`` for a script killed by signal N; None: it did not start.
    exit_code: int | None
    duration: float
    timed_out: bool
    output: str
    #: Why the script did not start, or was killed; None when it ran and exited.
    problem: str | None = None


def execute(
    argv: Sequence[str], *, sandbox: Sandbox, env: Mapping[str, str], timeout: float
) -> Execution:
    """Run *argv* (paths as seen inside the sandbox's root) and wait for it."""
    log.debug("health: run %s (in %s)", shlex.join(argv), sandbox.root)
    started = time.monotonic()
    err_read, err_write = os.pipe()
    setup = _ChildSetup(sandbox, err_write)
    try:
        proc = spawn(
            argv,
            stdout=PIPE,
            stderr=STDOUT,
            env=env,
            cwd=None if sandbox.chroot else sandbox.root,
            new_session=True,
            preexec_fn=setup if sandbox.chroot else None,
        )
    except (OSError, SubprocessError, ToolMissingError) as exc:
        os.close(err_write)
        detail = _read_all(err_read) or _describe(exc)
        return Execution(None, _since(started), False, "", f"could not start: {detail}")
    os.close(err_write)
    os.close(err_read)
    assert proc.stdout is not None
    with proc.stdout:
        tail, timed_out = _follow(proc, proc.stdout.fileno(), started + timeout)
    duration = _since(started)
    code = proc.returncode
    if code is None:
        return Execution(None, duration, timed_out, tail.text(), "could not be killed")
    exit_code = code if code >= 0 else 128 - code
    if timed_out:
        return Execution(exit_code, duration, True, tail.text(), f"timed out after {timeout:g} s")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return Execution(exit_code, duration, False, tail.text(), f"killed by signal {name}")
    return Execution(exit_code, duration, False, tail.text())


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ToolMissingError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the OSError says where it was looked for
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


def _read_all(fd: int) -> str:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()


class _Tail:
    """The first lines and the last bytes of a stream."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._data = bytearray()
        self._dropped = False

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self._data += chunk
        if len(self._data) > 4 * TAIL_BYTES:
            del self._data[: -TAIL_BYTES - 1]
            self._dropped = True

    def text(self) -> str:
        lines: list[str] | None = None
        if not self._dropped:
            lines = bytes(self._data).decode(errors="replace").rstrip("\n").splitlines()
            if len(lines) <= TAIL_LINES and len(self._data) <= TAIL_BYTES:
                return "\n".join(lines)
        # A long line at the start is shown as far as HEAD_BYTES reach.
        head = bytes(self._head).decode(errors="replace").splitlines()[:HEAD_LINES]
        if lines is not None:
            rest = _within(lines[len(head) :], TAIL_BYTES)
        else:
            text = bytes(self._data[-TAIL_BYTES:]).decode(errors="replace")
            if "\n" in text.rstrip("\n"):
                # The first line was cut by the byte limit: drop what is left of it.
                text = text.partition("\n")[2]
            rest = text.rstrip("\n").splitlines()
        rest = rest[-(TAIL_LINES - len(head) - 1) :]
        return "\n".join([*head, LEFT_OUT, *rest])


def _within(lines: list[str], limit: int) -> list[str]:
    """The last of *lines* that fit in *limit* bytes (a longer last line: its end)."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line.encode()) + 1
        if size > limit:
            if not kept:
                kept.append(line.encode()[-limit:].decode(errors="replace"))
            break
        kept.append(line)
    return kept[::-1]


def _follow(proc: Process, fd: int, deadline: float) -> tuple[_Tail, bool]:
    """Read the output until the script has exited and the pipe is closed (or
    :data:`_DRAIN` seconds later), enforcing *deadline*."""
    tail = _Tail()
    os.set_blocking(fd, False)
    pgid = proc.pid  # the leader of its own session and process group
    pidfd = _pidfd(proc.pid)
    timed_out = False
    #: When to escalate next: SIGTERM sent -> SIGKILL; SIGKILL sent -> give up.
    escalate_at: float | None = None
    killed = False
    exited_at: float | None = None
    eof = False
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if exited_at is None and _has_exited(proc.pid):
                    # Still a zombie, so its group id cannot be reused: clean the group up.
                    _kill_group(pgid, signal.SIGKILL)
                    proc.wait()
                    exited_at = now
                    if pidfd is not None:
                        selector.unregister(pidfd)
                if exited_at is not None:
                    if eof or now - exited_at >= _DRAIN:
                        break  # a process outside the group may hold the pipe: stop there
                    wait = exited_at + _DRAIN - now
                elif not timed_out and now >= deadline:
                    timed_out = True
                    _kill_group(pgid, signal.SIGTERM)
                    escalate_at = now + KILL_GRACE
                    wait = KILL_GRACE
                elif escalate_at is not None and now >= escalate_at:
                    if killed:
                        log.warning("health: process %d survives SIGKILL; leaving it", proc.pid)
                        break
                    _kill_group(pgid, signal.SIGKILL)
                    killed = True
                    escalate_at = now + KILL_GRACE
                    wait = KILL_GRACE
                else:
                    wait = (escalate_at if escalate_at is not None else deadline) - now
                if pidfd is None and exited_at is None:
                    wait = min(wait, _POLL)
                for key, _ in selector.select(max(wait, 0.0)):
                    if key.fd != fd:
                        continue  # the pidfd: the process exited, seen at the top
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if chunk:
                        tail.feed(chunk)
                    else:
                        eof = True
                        selector.unregister(fd)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return tail, timed_out


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when *pid* exits (Linux 5.3+)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _has_exited(pid: int) -> bool:
    """True once *pid* has exited; it is not reaped (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("health: no permission to signal process group %d", pgid)


class _ChildSetup:
    """Runs in the child between fork and exec: mounts and chroot.

    On failure it writes what failed to *err_fd* and raises, so Popen reports
    that the script could not start and the parent reads the reason."""

    def __init__(self, sandbox: Sandbox, err_fd: int) -> None:
        self.sandbox = sandbox
        self.err_fd = err_fd
        root = sandbox.root
        self.binds = [(str(host), str(root / inside.lstrip("/"))) for inside, host in sandbox.binds]
        proc_dir, dev_dir = root / "proc", root / "dev"
        self.proc = str(proc_dir) if sandbox.system_mounts and _is_dir(proc_dir) else None
        if sandbox.system_mounts and _is_dir(dev_dir):
            self.binds.insert(0, ("/dev", str(dev_dir)))
        self.root = str(root)

    def __call__(self) -> None:
        step = f"chroot into {self.root}"
        try:
            if self.binds or self.proc:
                step = "make a mount namespace"
                libc = ctypes.CDLL(None, use_errno=True)
                _check(libc.unshare(_CLONE_NEWNS))
                _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
                for source, target in self.binds:
                    step = f"bind {source} on {target}"
                    _check(
                        libc.mount(
                            os.fsencode(source), os.fsencode(target), None, _MS_BIND | _MS_REC, None
                        )
                    )
                if self.proc:
                    step = f"mount proc on {self.proc}"
                    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
                    _check(libc.mount(b"proc", os.fsencode(self.proc), b"proc", flags, None))
                step = f"chroot into {self.root}"
            os.chroot(self.root)
            os.chdir("/")
        except OSError as exc:
            os.write(self.err_fd, f"{step}: {exc.strerror or exc}".encode())
            raise


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno() or errno.EPERM
        raise OSError(err, os.strerror(err))
