from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import FailoverConfigError
from atoll.failover import Endpoint, load_config

BASE = {
    "name": "dev1",
    "listen": "127.0.0.1:7101",
    "peers": ["127.0.0.1:7102"],
    "address": "127.0.0.1:8080",
    "backend": "127.0.0.1:18081",
}


def test_a_file_with_overrides_on_top(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"0123456789abcdef0123\n")
    conf = tmp_path / "failover.toml"
    conf.write_text(
        "[failover]\n"
        'name = "dev1"\nlisten = "127.0.0.1:7101"\npeers = ["127.0.0.1:7102", "[::1]:7103"]\n'
        'address = "localhost:8080"\nbackend = "127.0.0.1:18081"\npriority = 150\n'
        f'interval = 2\npreempt = true\nkey_file = "{tmp_path / "key"}"\n'
        'notify = ["/bin/true"]\n'
    )
    config = load_config(conf, {"priority": 120, "peers": [], "name": None})
    assert config.name == "dev1"
    assert config.priority == 120
    assert config.interval == 2.0
    assert config.preempt is True
    assert config.peers == (Endpoint("127.0.0.1", 7102), Endpoint("::1", 7103))
    assert str(config.peers[1]) == "[::1]:7103"
    assert config.address == Endpoint("127.0.0.1", 8080)
    assert config.key == b"0123456789abcdef0123"
    assert config.notify == ("/bin/true",)
    assert config.status_path == Path("/run/atoll/failover/dev1.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"priority": 255}, "priority 255 is out of range 1-254"),
        ({"priority": 0}, "priority 0 is out of range"),
        ({"interval": 0.001}, "interval 0.001 s is out of range"),
        ({"interval": 41}, "out of range"),
        ({"group": 256}, "group 256"),
        ({"peers": []}, "no peers"),
        ({"peers": ["127.0.0.1:7101"]}, "own listen address"),
        ({"address": "127.0.0.1"}, "is not HOST:PORT"),
        ({"address": "127.0.0.1:70000"}, "port 70000 is out of range"),
        ({"backend": "example.com:80"}, "is not an IP address"),
        ({"backend": "127.0.0.1:8080"}, "is the service address itself"),
        ({"priority": "high"}, "failover.priority has the wrong type"),
        ({"preempt": "yes"}, "failover.preempt has the wrong type"),
        ({"priority": True}, "failover.priority has the wrong type"),
        ({"name": "x" * 65}, "must be 1-64 bytes"),
    ],
)
def test_bad_settings_are_named(change: dict[str, object], message: str) -> None:
    values = {**BASE, **change}
    with pytest.raises(FailoverConfigError, match=message) as info:
        load_config(None, values)
    assert info.value.exit_code == 90


def test_a_missing_setting_and_an_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(FailoverConfigError, match="backend is not set"):
        load_config(None, {k: v for k, v in BASE.items() if k != "backend"})
    conf = tmp_path / "f.toml"
    conf.write_text('[failover]\nname = "a"\nvip = "10.0.0.1"\n')
    with pytest.raises(FailoverConfigError, match=r"unknown key failover\.vip"):
        load_config(conf, {})
    conf.write_text("[other]\n")
    with pytest.raises(FailoverConfigError, match="no \\[failover\\] table"):
        load_config(conf, {})
    conf.write_text("[failover\n")
    with pytest.raises(FailoverConfigError, match=r"f\.toml"):
        load_config(conf, {})


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("short")
    with pytest.raises(FailoverConfigError, match="16 bytes or more"):
        load_config(None, {**BASE, "key_file": str(tmp_path / "key")})


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "failover.toml"
    conf.write_text("[failover]\npeers = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(FailoverConfigError, match="exceeded max depth"):
        load_config(conf, {})


def test_a_wrong_type_in_the_file_names_its_line_and_what_was_expected(tmp_path: Path) -> None:
    conf = tmp_path / "f.toml"
    conf.write_text('[failover]\nname = "a"\n\npriority = "high"\n')
    with pytest.raises(FailoverConfigError) as info:
        load_config(conf, {k: v for k, v in BASE.items() if k != "priority"})
    assert info.value.message.startswith(f"{conf}: line 4: failover.priority has the wrong type")
    assert "expected an integer, got a string" in info.value.message
    conf.write_text('[failover]\nname = "a"\nvip = "10.0.0.1"\n')
    with pytest.raises(FailoverConfigError, match=r"f\.toml: line 3: unknown key failover\.vip"):
        load_config(conf, {})
