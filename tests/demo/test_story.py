"""The demo's LAN names, their removal, and the bridge that brings the registry
on the host's loopback into a device's namespace."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.demo import bridge
from atoll.demo.story import lan_name, remove_lan
from helpers.parts import missing, require_tool


def test_each_demo_directory_has_its_own_lan_name() -> None:
    one, other = Path("/tmp/demo-a"), Path("/tmp/demo-b")
    assert lan_name(one) == lan_name(one)  # --stop finds the LAN again
    assert lan_name(one) != lan_name(other)
    # ip netns names of atoll.device.netns's form, members' included.
    for member in ("lan", "dev1", "dev2", "client"):
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,31}", f"{lan_name(one)}-{member}")


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    """A namespace named as the demo's dev1 of *tmp_path*, lo up."""
    require_tool("ip", "iproute2")
    if os.geteuid() != 0:
        missing("network namespaces need root")
    name = f"{lan_name(tmp_path)}-dev1"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"the host's registry\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.integration
def test_the_bridge_brings_the_hosts_loopback_port_into_a_namespace(netns: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetch = (
            "import sys, urllib.request\n"
            "try:\n"
            "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')\n"
            "except OSError as e:\n"
            "    print('no answer:', e)\n"
        )
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", fetch]
        url = f"http://127.0.0.1:{port}/"
        # The namespace has a loopback of its own: nothing there before the bridge.
        before = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
        assert before.stdout.startswith("no answer")
        listener = bridge.listen_in(f"/run/netns/{netns}", port)
        threading.Thread(target=bridge._accept, args=(listener, port), daemon=True).start()
        after = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
        assert after.stdout == "the host's registry\n"
        listener.close()
    finally:
        server.shutdown()


@pytest.mark.integration
def test_the_demos_namespaces_are_removed_by_its_directory(tmp_path: Path, netns: str) -> None:
    assert remove_lan(tmp_path) == [netns]
    assert not Path("/run/netns", netns).exists()
    assert remove_lan(tmp_path) == []
