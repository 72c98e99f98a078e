"""Reboot inhibitors: what may hold off a reboot into an update, and waiting for them.

Two kinds, both from ``[inhibitors]`` in ``/etc/atoll/updates.toml``:

* **files**: a reboot waits while the file exists, whatever its content and
  whether or not anyone holds a lock on it (``flock`` is not checked: a file
  left behind by a crashed program inhibits too, so put such files under
  ``/run``, which every boot starts empty).  Paths are looked up under the
  running system's root (``/`` on a real machine).
* **commands**: a reboot waits while the command exits non-zero, does not
  finish within :data:`COMMAND_TIMEOUT` seconds, or cannot be run at all
  (a missing program fails safe: it inhibits).  Commands run without a shell,
  with stdin from /dev/null and a clean environment.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.errors import CommandError, RebootInhibitedError, ToolMissingError
from atoll.run import run
from atoll.updates.clock import Clock
from atoll.updates.config import UpdatesConfig, load_config

#: Seconds an inhibitor command may take before it counts as "not ready".
COMMAND_TIMEOUT = 30.0
#: Seconds between two looks while waiting for inhibitors to let go.
POLL_INTERVAL = 5.0


class InhibitorKind(StrEnum):
    FILE = "file"
    COMMAND = "command"


@dataclass(frozen=True)
class Inhibitor:
    """One inhibitor that holds a reboot off right now."""

    kind: InhibitorKind
    #: The path, or the command line.
    what: str
    #: Why it holds: "exists", "exited with 1: busy", …
    detail: str

    def describe(self) -> str:
        return f"{self.what} ({self.detail})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "what": self.what, "detail": self.detail}


#: Runs an inhibitor command: (argv) -> (exit code, last line of stderr).
CommandRunner = Callable[[Sequence[str]], tuple[int, str]]


def run_inhibitor_command(argv: Sequence[str]) -> tuple[int, str]:
    proc = run(argv, check=False, timeout=COMMAND_TIMEOUT)
    lines = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
    return proc.returncode, lines[-1].strip() if lines else ""


def check_inhibitors(
    config: UpdatesConfig, root: Path, *, run_command: CommandRunner = run_inhibitor_command
) -> list[Inhibitor]:
    """Every inhibitor holding a reboot off now (empty: a reboot may go ahead)."""
    held: list[Inhibitor] = []
    for name in config.inhibitors.files:
        path = root / name.lstrip("/")
        if path.is_symlink() or path.exists():
            held.append(Inhibitor(InhibitorKind.FILE, name, "exists"))
    for argv in config.inhibitors.commands:
        line = " ".join(argv)
        try:
            code, last = run_command(argv)
        except ToolMissingError:
            held.append(Inhibitor(InhibitorKind.COMMAND, line, "not found"))
            continue
        except CommandError as exc:  # a timeout
            held.append(Inhibitor(InhibitorKind.COMMAND, line, exc.message))
            continue
        except OSError as exc:
            held.append(Inhibitor(InhibitorKind.COMMAND, line, f"cannot run: {exc.strerror}"))
            continue
        if code != 0:
            detail = f"exited with {code}" + (f": {last}" if last else "")
            held.append(Inhibitor(InhibitorKind.COMMAND, line, detail))
    return held


def inhibited_error(held: Sequence[Inhibitor], waited: float = 0) -> RebootInhibitedError:
    """The error for *held* inhibitors, after waiting *waited* seconds for them."""
    who = "; ".join(i.describe() for i in held)
    after = f" after waiting {waited:g} s" if waited > 0 else ""
    return RebootInhibitedError(
        f"reboot inhibited{after} by {who}",
        holders=[i.describe() for i in held],
        hint="wait until they let go, pass --force to reboot anyway, "
        "or see [inhibitors] in /etc/atoll/updates.toml",
    )


def wait_for_inhibitors(
    config: UpdatesConfig,
    root: Path,
    clock: Clock,
    timeout: float | datetime.timedelta,
    *,
    poll: float = POLL_INTERVAL,
    run_command: CommandRunner = run_inhibitor_command,
) -> None:
    """Return once no inhibitor holds; raise :class:`RebootInhibitedError` naming
    the holders when they still hold after *timeout* (0: look once)."""
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
    deadline = clock.now() + datetime.timedelta(seconds=seconds)
    while True:
        held = check_inhibitors(config, root, run_command=run_command)
        if not held:
            return
        now = clock.now()
        remaining = (deadline - now).total_seconds()
        if remaining <= 0:
            raise inhibited_error(held, seconds)
        clock.sleep(min(poll, remaining))


def ensure_reboot_allowed(
    root: Path,
    clock: Clock,
    *,
    force: bool = False,
    timeout: float | datetime.timedelta = 0,
    run_command: CommandRunner = run_inhibitor_command,
) -> list[Inhibitor]:
    """What ``atoll upgrade --apply`` calls before it reboots: wait up to *timeout*
    for the inhibitors of the system at *root*, or raise.  With *force*, nothing
    waits; the inhibitors holding are returned so the caller can say it ignored them."""
    config = load_config(root)
    if force:
        return check_inhibitors(config, root, run_command=run_command)
    wait_for_inhibitors(config, root, clock, timeout, run_command=run_command)
    return []
