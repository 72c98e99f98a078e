"""atoll.lazy: modules imported on first use, without the parts atoll never uses."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

_FIRST_USE = """
import sys
from atoll.lazy import lazy_module
httpx = lazy_module("httpx")
print("httpx" in sys.modules)
client = httpx.Client(trust_env=False)
client.close()
print("httpx" in sys.modules, "trio" in sys.modules, "httpx._main" in sys.modules)
import trio  # left out of httpx only: other code still imports it
print(trio.__name__)
"""


def test_httpx_is_imported_on_first_use_without_trio() -> None:
    if importlib.util.find_spec("trio") is None:
        pytest.skip("trio is not installed: nothing to leave out")
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_USE], capture_output=True, text=True, check=True,
        env=os.environ,
    ).stdout.split()  # fmt: skip
    assert out == ["False", "True", "False", "False", "trio"]
