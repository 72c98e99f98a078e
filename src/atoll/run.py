"""The one way atoll runs other programs.

argv lists only, never a shell; stdin from /dev/null unless input is given; an
explicit environment; the command logged at debug level; a failure raises
:class:`atoll.errors.CommandError` with the command, exit code and the tail of
its stderr.  :func:`run` waits for the program; :func:`spawn` starts it and
hands back the process, for callers that read its output as it comes, wait
with their own deadline or stop it themselves.  No other module imports
:mod:`subprocess` (tests/test_run.py checks): the names those callers need are
here.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from atoll.errors import CommandError, ToolMissingError

log = logging.getLogger(__name__)

#: A started program, as :func:`spawn` returns it.
Process = subprocess.Popen[bytes]
#: A finished program, as :func:`run` returns it.
Completed = subprocess.CompletedProcess[bytes]
#: Raised by ``Process.wait``/``communicate`` when their timeout passes.
TimeoutExpired = subprocess.TimeoutExpired
#: Raised by :func:`spawn` when a *preexec_fn* failed in the child.
SubprocessError = subprocess.SubprocessError
#: What :func:`spawn` can connect a stream to besides a file.
PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL
#: A stream argument of :func:`spawn`: PIPE, STDOUT, DEVNULL, a descriptor or a file.
Stream = int | IO[bytes] | None

#: Variables passed to children when the caller gives no environment.
_KEEP_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "CONTAINERS_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_STORAGE_CONF",
    "REGISTRY_AUTH_FILE",
    # A Python child (atoll itself, a test's helper) must not write bytecode
    # into a source tree whose parent asked not to.
    "PYTHONDONTWRITEBYTECODE",
)
_TAIL_LINES = 20


def base_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def find_tool(
    name: str, package: str | None = None, *, why: str = "", hint: str | None = None
) -> str:
    """The path of the program *name*, else ToolMissingError (saying *why* it is
    needed, when given, and how to install it: *hint*, or apt-get *package*)."""
    path = shutil.which(name, path=base_environment()["PATH"])
    if path is None:
        raise ToolMissingError(
            f"{name} is not installed" + (f"; {why}" if why else ""),
            argv=[name],
            hint=hint or f"install it with: apt-get install {package or name}",
        )
    return path


def dies_with_caller(argv: Sequence[str], signal: str = "SIGTERM") -> list[str]:
    """*argv* under util-linux's ``setpriv --pdeathsig``: the kernel sends it
    *signal* when the thread that started it ends, the caller killed by SIGKILL
    included (the setting survives exec of a program that is not set-user-ID)."""
    return [find_tool("setpriv", "util-linux"), f"--pdeathsig={signal}", "--", *argv]


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
) -> Completed:
    args = [str(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else base_environment(),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise ToolMissingError(f"{args[0]} is not installed", argv=args) from None
    except subprocess.TimeoutExpired:
        raise CommandError(
            f"{Path(args[0]).name} did not finish within {timeout} s", argv=args
        ) from None
    if check and proc.returncode != 0:
        raise command_failed(args, proc.returncode, proc.stderr or b"")
    return proc


def spawn(
    argv: Sequence[str | Path],
    *,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    process_group: int | None = None,
    pass_fds: Sequence[int] = (),
    preexec_fn: Callable[[], object] | None = None,
) -> Process:
    """Start *argv* and return it running, with :func:`run`'s rules: stdin from
    /dev/null unless *stdin* is given, the base environment unless *env* is, the
    command logged, ToolMissingError when the program does not exist.  The
    caller waits for it (and reads what it connected to PIPE)."""
    args = [str(a) for a in argv]
    log.debug("spawn: %s", shlex.join(args))
    try:
        return subprocess.Popen(
            args,
            stdin=DEVNULL if stdin is None else stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else base_environment(),
            cwd=cwd,
            start_new_session=new_session,
            process_group=process_group,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,  # noqa: PLW1509 (a chroot needs it: atoll.health.execute)
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{args[0]} is not installed", argv=args) from exc


def command_failed(argv: Sequence[str], returncode: int, stderr: bytes) -> CommandError:
    lines = stderr.decode(errors="replace").strip().splitlines()
    tail = "\n".join(lines[-_TAIL_LINES:])
    last = lines[-1].strip() if lines else "no error output"
    return CommandError(
        f"{Path(argv[0]).name} failed with exit code {returncode}: {last}",
        argv=list(argv),
        returncode=returncode,
        stderr_tail=tail,
    )
