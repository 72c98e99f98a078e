"""Finding the real parts tests need: skip when one is missing, fail in CI."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip the test, or fail it in CI where every part must be installed."""
    if IN_CI:
        pytest.fail(f"CI requires this part: {reason}")
    pytest.skip(reason)


def require_tool(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install {package or name})")
        raise AssertionError("unreachable")
    return path
