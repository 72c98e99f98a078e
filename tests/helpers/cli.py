"""Running the real ``atoll`` command in a child process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_atoll(
    *args: str, crash_at: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m atoll ARGS`` with no ATOLL_* variables but ``ATOLL_CRASH_AT``
    when *crash_at* names a crash point (see atoll.faults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
    if crash_at:
        env["ATOLL_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "atoll", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
