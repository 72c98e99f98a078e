"""``ansible-test sanity`` and ``ansible-test units`` of the atoll.edge collection as
its tarball installs it, offline (tests/helpers/ansible.py says which sanity tests
run and why the others do not)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.ansible import SANITY_TESTS, Collection, sanity_run, units_run

pytestmark = [pytest.mark.integration]


def test_sanity(collection: Collection, tmp_path: Path) -> None:
    output = sanity_run(collection, tmp_path / "home")
    for name in SANITY_TESTS:
        assert f'Running sanity test "{name}"' in output, output
    assert "Skipping sanity test" not in output, output


def test_units(collection: Collection, tmp_path: Path) -> None:
    output = units_run(collection, tmp_path / "home")
    passed = [int(n) for n in re.findall(r"(\d+) passed", output)]
    assert sum(passed) == 16, output  # modules and module_utils
