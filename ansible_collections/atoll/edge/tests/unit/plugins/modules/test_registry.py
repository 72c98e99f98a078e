# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from pathlib import Path

from atoll.oci.registries_conf import parse_registries_conf
from ansible_collections.atoll.edge.plugins.modules.registry import (
    drop_in_name,
    registries_conf_text,
)


def test_the_drop_in_reads_back_as_written():
    text = registries_conf_text(
        "registry.lab:5000", {"insecure": True, "blocked": False, "mirrors": ["mirror.lab/x"]}
    )
    [entry] = parse_registries_conf(text, Path("50.conf"))
    assert (entry.location, entry.insecure, entry.blocked) == ("registry.lab:5000", True, False)
    assert '[[registry.mirror]]\nlocation = "mirror.lab/x"' in text


def test_no_setting_no_drop_in():
    assert registries_conf_text("r.lab", {"insecure": None, "blocked": None, "mirrors": None}) is None


def test_a_quote_in_the_name_stays_in_its_string():
    text = registries_conf_text('r.lab"\nblocked = true', {"insecure": True, "blocked": None, "mirrors": []})
    [entry] = parse_registries_conf(text, Path("50.conf"))
    assert entry.location == 'r.lab"\nblocked = true' and not entry.blocked
    assert drop_in_name("r.lab:5000/../x") == "50-atoll-edge-r.lab_5000_.._x.conf"
