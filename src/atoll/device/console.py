"""Running a machine whose console is its standard output: a container
(systemd-nspawn) or a virtual machine (QEMU), each in a process group of its
own, with a deadline and a stop that never leaves it running."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol, TypeVar

from atoll.errors import from_oserror
from atoll.run import PIPE, STDOUT, Process, TimeoutExpired, spawn

log = logging.getLogger(__name__)


class Console(Protocol):
    """Reads the machine's output on a thread of its own until it ends."""

    def close(self) -> None: ...


C = TypeVar("C", bound=Console)


def run_with_console(
    argv: Sequence[str],
    *,
    timeout: float,
    console_log: Path | None,
    console: Callable[[IO[bytes], IO[bytes] | None], C],
    stop: Callable[[Process], int],
    label: str,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], object] | None = None,
    stdin: int | None = None,
) -> tuple[int, bool, float, C, int]:
    """Run *argv* until it exits or *timeout* passes (then *stop* ends it);
    return (exit code, timed out, seconds, the console that read its output,
    also appended to *console_log* when given, the process (group) id).
    *env*: the program's environment (default: atoll.run's base environment);
    *preexec*: run in the child before the program (see atoll.device.cgroup);
    *stdin*: a file descriptor for its input (default: /dev/null)."""
    try:
        sink = console_log.open("ab") if console_log is not None else None
    except OSError as exc:
        raise from_oserror(exc, str(console_log)) from None
    try:
        started = time.monotonic()
        proc = spawn(
            argv,
            stdin=stdin,
            stdout=PIPE,
            stderr=STDOUT,
            process_group=0,
            env=env,
            preexec_fn=preexec,
        )
        assert proc.stdout is not None
        reader = console(proc.stdout, sink)
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except TimeoutExpired:
            timed_out = True
            log.debug("%s still running after %s s, stopping it", label, timeout)
            code = stop(proc)
        finally:
            if proc.returncode is None:  # interrupted: never leave the machine running
                stop(proc)
            duration = time.monotonic() - started
            reader.close()
    finally:
        if sink is not None:
            sink.close()
    return code, timed_out, duration, reader, proc.pid
