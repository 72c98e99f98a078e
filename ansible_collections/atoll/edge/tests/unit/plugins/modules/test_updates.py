# Copyright: atoll developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import InvalidInputError
from atoll.updates import parse_config
from ansible_collections.atoll.edge.plugins.modules.updates import render

NONE = {
    "policy": "none",
    "download_window": None,
    "download_timezone": None,
    "random_delay": None,
    "rate_limit": None,
    "apply_window": None,
    "apply_timezone": None,
    "inhibitor_files": None,
    "inhibitor_commands": None,
    "max_signature_age": None,
    "allow_downgrade": None,
}


def test_every_option_reaches_atolls_parser():
    params = dict(
        NONE,
        policy="apply",
        download_window="* 2-4 * * *",
        download_timezone="Europe/Berlin",
        random_delay="30m",
        rate_limit="2MiB/s",
        apply_window="* 3 * * sun",
        apply_timezone="UTC",
        inhibitor_files=["/run/atoll/inhibit-reboot"],
        inhibitor_commands=['/usr/bin/ready --name "a b"'],
        max_signature_age="7d",
        allow_downgrade=True,
    )
    config = parse_config(render(params), Path("/etc/atoll/updates.toml")).to_json()
    assert config["policy"] == "apply"
    assert config["download"]["randomDelaySeconds"] == 1800
    assert config["download"]["rateLimit"] == 2 * 1024 * 1024
    assert config["inhibitors"]["commands"] == [["/usr/bin/ready", "--name", "a b"]]
    assert config["trust"] == {"maxSignatureAgeSeconds": 7 * 86400, "allowDowngrade": True}


def test_a_value_atoll_refuses_names_the_file_and_the_key():
    with pytest.raises(InvalidInputError) as refused:
        parse_config(render(dict(NONE, random_delay="30 parsecs")), Path("/r/updates.toml"))
    assert str(refused.value).startswith("/r/updates.toml: line ")
    assert ": download.random_delay: " in str(refused.value)
