"""A LAN of network namespaces for container-boot devices (atoll.device.netns)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.device.netns import BRIDGE, MEMBER_IFACE, Lan, lan_namespaces, remove_lan
from atoll.device.nspawn import nspawn_command, parse_network
from atoll.errors import InvalidInputError, NetworkSetupError
from helpers.cli import run_atoll
from helpers.parts import missing, require_tool


@pytest.fixture
def lan_name() -> str:
    require_tool("ip", "iproute2")
    if os.geteuid() != 0:
        missing("network namespaces need root")
    return f"nt{secrets.token_hex(3)}"


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    data: list[dict[str, object]] = json.loads(out)
    return data


def test_members_reach_each_other_and_the_host_sees_nothing(lan_name: str) -> None:
    host_links = {link["ifname"] for link in _ip_json("link", "show")}
    with Lan.create(lan_name) as lan:
        lan.add("dev1", "10.98.0.11/24")
        lan.add("client", "10.98.0.20/24")
        assert lan_namespaces(lan_name) == [
            f"{lan_name}-client",
            f"{lan_name}-dev1",
            lan.bridge_netns,
        ]
        code = (
            "import socket, sys\n"
            "s = socket.socket(); s.bind(('10.98.0.11', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True); c, _ = s.accept(); c.sendall(b'hello')\n"
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", lan.netns("dev1"), sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        fetch = (
            "import socket, sys\n"
            "c = socket.create_connection(('10.98.0.11', int(sys.argv[1])), 5)\n"
            "print(c.recv(5).decode())\n"
        )
        got = subprocess.run(
            ["ip", "netns", "exec", lan.netns("client"), sys.executable, "-c", fetch, port],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        server.wait(10)
        assert got.stdout.strip() == "hello"
        # Not routed from the host: the address is in no namespace of the host's.
        # Links other tests make meanwhile (podman's veths) may come and go; none of
        # the LAN's own names appears on the host.
        new_links = {link["ifname"] for link in _ip_json("link", "show")} - host_links
        assert not new_links & {BRIDGE, MEMBER_IFACE, "vm0", "vm1"}, new_links
        assert "10.98.0.11" not in json.dumps(_ip_json("addr", "show"))
        lan.unplug("dev1")
        assert "10.98.0.11" not in json.dumps(_ip_json("-n", lan.netns("dev1"), "addr"))
        lan.plug("dev1")
        assert "10.98.0.11" in json.dumps(_ip_json("-n", lan.netns("dev1"), "addr"))
    assert lan_namespaces(lan_name) == []


def test_a_lan_left_behind_is_removed_by_name(lan_name: str) -> None:
    lan = Lan.create(lan_name)
    lan.add("dev1", "10.98.0.11/24")
    with pytest.raises(NetworkSetupError, match="exists already"):
        Lan.create(lan_name)
    assert len(lan_namespaces(lan_name)) == 2  # the refused second LAN took nothing away
    assert remove_lan(lan_name) == [f"{lan_name}-dev1", f"{lan_name}-lan"]
    assert lan_namespaces(lan_name) == []
    assert remove_lan(lan_name) == []


def test_bad_members_are_refused(lan_name: str) -> None:
    with Lan.create(lan_name) as lan:
        with pytest.raises(InvalidInputError, match="ADDRESS/PREFIX"):
            lan.add("dev1", "10.98.0.300/24")
        with pytest.raises(InvalidInputError, match="not valid"):
            lan.add("Dev 1", "10.98.0.11/24")
        lan.add("dev1", "10.98.0.11/24")
        with pytest.raises(InvalidInputError, match="already"):
            lan.add("dev1", "10.98.0.12/24")
    assert lan_namespaces(lan_name) == []


def test_a_device_boots_into_a_named_namespace(lan_name: str, tmp_path: Path) -> None:
    with Lan.create(lan_name) as lan:
        path = lan.add("dev1", "10.98.0.11/24")
        assert parse_network(lan.netns("dev1")) == str(path)
        assert parse_network(str(path)) == str(path)
        root, var = tmp_path / "root", tmp_path / "var"
        root.mkdir()
        var.mkdir()
        argv = nspawn_command(root, var=var, machine="dev1", network=parse_network(str(path)))
        assert f"--network-namespace-path={path}" in argv
        assert "--private-network" not in argv
    with pytest.raises(InvalidInputError, match="does not exist"):
        parse_network(lan.netns("dev1"))
    assert parse_network("host") == "host"
    with pytest.raises(InvalidInputError):
        parse_network("relative/path")


def test_device_boot_refuses_a_namespace_that_does_not_exist(tmp_path: Path) -> None:
    done = run_atoll("device", "boot", "--sysroot", str(tmp_path), "--network", "no-such-ns-x1")
    assert done.returncode == 4
    assert "network namespace /run/netns/no-such-ns-x1 does not exist" in done.stderr
