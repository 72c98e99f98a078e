"""Fixtures of the boot tests: two versions of an OS image in an OCI layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.osimage import build_os_image


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An OCI layout with versions 1.0 and 2.0 (refs ``1`` and ``2``) of an OS image."""
    layout = tmp_path / "images"
    for ref in ("1", "2"):
        build_os_image(layout, ref, version=f"{ref}.0")
    return layout
