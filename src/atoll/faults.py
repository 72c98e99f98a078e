"""Fault injection: crash the process at a named step, for crash-safety tests.

A test runs atoll in a child process with ``ATOLL_CRASH_AT=NAME``; when the code
reaches ``crashpoint("NAME")`` the child kills itself with SIGKILL, as a power
cut would stop it: no ``finally`` blocks, no atexit handlers, no flushing.  The
test then checks that what is on disk is the old state or the new one.
Without the variable a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "ATOLL_CRASH_AT"


def crashpoint(name: str) -> None:
    """Die at once, by SIGKILL, when ``ATOLL_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
