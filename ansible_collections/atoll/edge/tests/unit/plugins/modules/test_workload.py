# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from atoll.errors import QuadletDependencyError, QuadletUnitError
from ansible_collections.atoll.edge.plugins.modules.workload import generate, with_install

UNIT = "[Container]\nImage=registry.lab/web:1\n"


def test_the_generated_service_is_atolls(tmp_path):
    service, text = generate("web.container", with_install(UNIT, True), str(tmp_path))
    assert service == "web.service"
    assert "registry.lab/web:1" in text
    assert "WantedBy=multi-user.target" in text


def test_enabled_keeps_an_install_section_of_the_units_own():
    unit = UNIT + "[Install]\nWantedBy=default.target\n"
    assert with_install(unit, True) == unit


def test_a_reference_to_a_missing_unit_is_refused(tmp_path):
    with pytest.raises(QuadletDependencyError) as refused:
        generate("web.container", UNIT + "Network=lan.network\n", str(tmp_path))
    assert str(refused.value) == (
        f"{tmp_path}/web.container: the Quadlet unit lan.network was not found"
    )


def test_a_name_that_is_not_a_unit_is_refused(tmp_path):
    with pytest.raises(QuadletUnitError):
        generate("web.service", UNIT, str(tmp_path))
