"""Fixtures for the health-check tests: a busybox system to chroot into."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.busybox_root import BusyboxRoot, make_root, missing


@pytest.fixture
def root(tmp_path: Path) -> BusyboxRoot:
    """A busybox system; skipped (failed in CI) where chroot is not allowed."""
    if os.geteuid() != 0:
        missing("running checks in a chroot needs root")
    return make_root(tmp_path / "root")
