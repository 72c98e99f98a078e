"""Finding the real parts tests need: skip when one is missing, fail in CI."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request

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


def download(url: str, sha256: str) -> bytes:
    """The bytes at *url*, which must hash to *sha256*; a download that fails is a
    missing part, a wrong hash a failure."""
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data: bytes = response.read()
    except OSError as exc:
        missing(f"cannot download {url}: {exc}")
        raise AssertionError("unreachable") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        pytest.fail(f"{url} does not have the expected sha256")
    return data
