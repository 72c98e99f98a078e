"""Putting a spec's files, units and update policy in place under a root."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.agent.apply import apply_config
from atoll.errors import SpecTrustError
from atoll.updates.config import UpdatePolicy, load_config


def test_the_update_policy_is_one_the_device_reads(tmp_path: Path) -> None:
    (tmp_path / "etc/atoll").mkdir(parents=True)
    (tmp_path / "etc/atoll/updates.toml").write_text(
        '[inhibitors]\nfiles = ["/run/hold"]\n[trust]\nallow_downgrade = false\n'
    )
    policy = {
        "policy": "apply",
        "download": {"window": "* 2-4 * * *", "timezone": "Europe/Berlin"},
        "apply": {"window": "* 3 * * sun", "timezone": "UTC"},
    }
    apply_config(tmp_path, {"updatePolicy": policy}, {})
    config = load_config(tmp_path)
    assert config.policy is UpdatePolicy.APPLY
    assert str(config.inhibitors.files[0]) == "/run/hold"


def test_nothing_is_written_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/app").symlink_to(outside)
    spec = {"files": [{"path": "/etc/app/x.conf", "content": "x"}]}
    with pytest.raises(SpecTrustError, match="is a symlink"):
        apply_config(root, spec, {})
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("path", ["/root/.ssh/authorized_keys", "/etc/../root/x"])
def test_files_outside_etc_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(SpecTrustError, match="outside /etc"):
        apply_config(tmp_path, {"files": [{"path": path, "content": "x"}]}, {})
