"""keepalived.conf from atoll's failover settings: what is written, what is refused,
and keepalived's own test of the result."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from atoll.errors import KeepalivedConfigError, KeepalivedStateError
from atoll.failover.keepalived import load_settings, read_state, render_config, settings_from
from helpers.cli import run_atoll

SETTINGS = """\
[failover]
instance = "web"
router_id = 7
interface = "eth0"
address = "10.99.0.100/24"
priority = 150
interval = 0.2
source = "10.99.0.11"
peers = ["10.99.0.12"]
check = ["/usr/local/bin/web-health", "--port=8080"]
check_interval = 2
fall = 2
notify_master = ["/usr/bin/systemctl", "start", "web.service"]
notify_backup = ["/usr/bin/systemctl", "stop", "web.service"]
"""


def test_settings_become_one_vrrp3_instance_without_preemption(tmp_path: Path) -> None:
    path = tmp_path / "failover.toml"
    path.write_text(SETTINGS)
    text = render_config(load_settings(path))
    instance = text[text.index("vrrp_instance web {") :]
    for line in (
        "state BACKUP",
        "interface eth0",
        "virtual_router_id 7",
        "priority 150",
        "advert_int 0.2",
        "nopreempt",
        "unicast_src_ip 10.99.0.11",
        "10.99.0.100/24 dev eth0",
        "atoll_check",
        'notify_master "/usr/bin/systemctl start web.service"',
        'notify_backup "/usr/bin/systemctl stop web.service"',
    ):
        assert f"    {line}\n" in instance or f"        {line}\n" in instance, line
    assert "vrrp_version 3" in text
    assert 'script "/usr/local/bin/web-health --port=8080"' in text
    assert "    interval 2\n    timeout 1\n    fall 2\n    rise 1\n" in text
    assert "notify_fault" not in text
    preempting = render_config(settings_from({**_table(), "preempt": True}))
    assert "nopreempt" not in preempting


def _table() -> dict[str, object]:
    return {"interface": "eth0", "address": "10.99.0.100/24", "peers": ["10.99.0.12"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": "10.99.0.100"}, "has no prefix"),
        ({"interval": 0.005}, "steps of 0.01 s"),
        ({"interval": 0.123}, "steps of 0.01 s"),
        ({"priority": 255}, "out of range 1-254"),
        ({"router_id": 0}, "out of range 1-255"),
        ({"interface": "eth0 dev lo"}, "not an interface name"),
        ({"instance": "a{b"}, "instance"),
        ({"peers": ["fe80::1"]}, "not IPv4"),
        ({"peers": ["10.99.0.300"]}, "not an IP address"),
        ({"check": ["web-health"]}, "not an absolute path"),
        ({"check": ["/bin/sh", "-c", "true; rm -rf /"]}, "cannot be passed to keepalived"),
        ({"notify_master": ["/bin/echo", 'a"b']}, "cannot be passed to keepalived"),
        ({"check_interval": 0}, "1-4294 whole seconds"),
        ({"check_interval": 0.5}, "wrong type"),
        ({"preempt": "no"}, "wrong type"),
        ({"vip": "10.99.0.100/24"}, "unknown key failover.vip"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(KeepalivedConfigError) as info:
        settings_from({**_table(), **change})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_error_in_the_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "failover.toml"
    path.write_text(SETTINGS.replace("priority = 150", 'priority = "high"'))
    with pytest.raises(KeepalivedConfigError, match=r"failover.toml: line 6: failover.priority"):
        load_settings(path)


def test_keepalived_accepts_what_atoll_failover_config_writes(tmp_path: Path) -> None:
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed (apt-get install keepalived)")
    # keepalived checks that the scripts exist and are not writable by others.
    health = tmp_path / "web-health"
    health.write_text("#!/bin/sh\nexit 0\n")
    health.chmod(0o755)
    tmp_path.chmod(0o755)
    settings = tmp_path / "failover.toml"
    settings.write_text(SETTINGS.replace("/usr/local/bin/web-health", str(health)))
    output = tmp_path / "keepalived.conf"
    done = run_atoll("failover", "config", "--settings", str(settings), "--output", str(output),
                     "--check", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert output.read_text() == render_config(load_settings(settings), str(settings))
    # keepalived's own test fails on what it cannot use (script intervals are whole seconds).
    broken = tmp_path / "broken.conf"
    broken.write_text(output.read_text().replace("interval 2\n", "interval 0.5\n"))
    test = subprocess.run(["keepalived", "-t", "-f", str(broken)], capture_output=True, check=False)
    assert test.returncode != 0


def test_status_without_keepalived_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(KeepalivedStateError, match="keepalived is not running"):
        read_state(tmp_path / "keepalived.pid", tmp_path / "keepalived.json")
    done = run_atoll("failover", "status", "--pid-file", str(tmp_path / "none.pid"))
    assert done.returncode == 37
    assert "keepalived is not running" in done.stderr
