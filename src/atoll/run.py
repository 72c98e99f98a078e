"""The one way atoll runs other programs.

argv lists only, never a shell; stdin from /dev/null unless input is given; an
explicit environment; the command logged at debug level; a failure raises
:class:`atoll.errors.CommandError` with the command, exit code and the tail of
its stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from atoll.errors import CommandError, ToolMissingError

log = logging.getLogger(__name__)

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
) -> subprocess.CompletedProcess[bytes]:
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
