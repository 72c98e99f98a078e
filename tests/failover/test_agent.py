"""Two real agents (``atoll failover run`` processes) on loopback, with real
sockets: adverts over UDP, the service address a TCP listening socket that the
master forwards to its own backend."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.cli import run_atoll

INTERVAL = "0.3"


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Backend:
    """A device's workload: answers every connection with the device's name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.sendall(self.name.encode())

    def close(self) -> None:
        self.sock.close()


class Agent:
    def __init__(self, tmp: Path, name: str, listen: int, peer: int, address: int) -> None:
        self.name = name
        self.listen, self.peer, self.address = listen, peer, address
        self.backend = Backend(name)
        self.status_file = tmp / f"{name}.json"
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, priority: int, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
        argv = [
            sys.executable, "-m", "atoll", "failover", "run",
            "--name", self.name,
            "--listen", f"127.0.0.1:{self.listen}",
            "--peer", f"127.0.0.1:{self.peer}",
            "--priority", str(priority),
            "--interval", INTERVAL,
            "--address", f"127.0.0.1:{self.address}",
            "--backend", f"127.0.0.1:{self.backend.port}",
            "--status-file", str(self.status_file),
            *extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.status_file.read_text())
        return doc

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.backend.close()


def answer(port: int) -> str | None:
    """Who serves the address: the name its backend sends, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            return conn.recv(100).decode() or None
    except OSError:
        return None


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s: {what}")
        time.sleep(0.05)


def current(agent: Agent) -> dict[str, Any]:
    """The agent's status, or {} before it has written one."""
    try:
        return agent.status()
    except (OSError, ValueError):
        return {}


def role(agent: Agent) -> str | None:
    return current(agent).get("role")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Agent, Agent, int]]:
    one, two = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    address = free_port()
    dev1 = Agent(tmp_path, "dev1", one, two, address)
    dev2 = Agent(tmp_path, "dev2", two, one, address)
    yield dev1, dev2, address
    for agent in (dev1, dev2):
        agent.close()


def serving(port: int, name: str) -> Callable[[], bool]:
    return lambda: answer(port) == name


def test_the_standby_takes_the_address_when_the_master_is_killed(
    pair: tuple[Agent, Agent, int],
) -> None:
    dev1, dev2, address = pair
    dev1.start(150)
    wait_for("dev1 serves", serving(address, "dev1"))
    dev2.start(100)
    wait_for("dev2 follows dev1", lambda: current(dev2).get("master") == "dev1")
    doc = dev2.status()
    assert doc["role"] == "backup"
    assert doc["addressHeld"] is False
    assert [answer(address) for _ in range(5)] == ["dev1"] * 5

    dev1.stop(signal.SIGKILL)
    wait_for("dev2 serves", serving(address, "dev2"))
    doc = dev2.status()
    assert doc["role"] == "master"
    assert doc["addressHeld"] is True
    assert doc["reason"].startswith("no advert from a master for")
    assert [h["role"] for h in doc["history"]] == ["backup", "master"]
    assert doc["masterDownInterval"] == pytest.approx(3 * 0.3 + 156 * 0.3 / 256, abs=0.001)


def test_a_master_that_stops_hands_over_and_says_so(
    pair: tuple[Agent, Agent, int], tmp_path: Path
) -> None:
    dev1, dev2, address = pair
    dev1.start(150)
    wait_for("dev1 serves", serving(address, "dev1"))
    roles = tmp_path / "roles"
    dev2.start(100, "--notify", f"/bin/sh -c 'echo \"$1\" >> {roles}' notify")
    wait_for("dev2 follows dev1", lambda: current(dev2).get("master") == "dev1")
    assert dev1.stop(signal.SIGTERM) == 0
    wait_for("dev2 serves", serving(address, "dev2"))
    assert dev2.status()["reason"] == "the master gave the address up"
    wait_for("the notify command ran", lambda: roles.is_file() and "master" in roles.read_text())
    assert roles.read_text().split() == ["backup", "master"]
    shown = run_atoll("failover", "status", "--status-file", str(dev1.status_file), "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["role"], doc["running"], doc["addressHeld"]) == ("stopped", False, False)
    human = run_atoll("failover", "status", "--status-file", str(dev2.status_file)).stdout
    assert human.startswith("dev2: master; serving 127.0.0.1:")


@pytest.mark.parametrize("preempt", [False, True])
def test_a_device_that_comes_back_takes_the_address_only_with_preemption(
    pair: tuple[Agent, Agent, int], preempt: bool
) -> None:
    dev1, dev2, address = pair
    dev2.start(100)
    wait_for("dev2 serves", serving(address, "dev2"))
    dev1.start(150, *(["--preempt"] if preempt else []))
    if preempt:
        wait_for("dev1 takes the address back", serving(address, "dev1"))
        assert "stepping down" in dev2.status()["reason"]
    else:
        wait_for("dev1 follows dev2", lambda: current(dev1).get("master") == "dev2")
        assert role(dev1) == "backup"
        assert answer(address) == "dev2"


def test_two_masters_never_both_serve_the_address(pair: tuple[Agent, Agent, int]) -> None:
    """Different keys: neither accepts the other's adverts, so both become master;
    the address is one listening socket, and only one of them gets it."""
    dev1, dev2, address = pair
    keys = dev1.status_file.parent
    (keys / "k1").write_text("a-key-of-sixteen-bytes-1")
    (keys / "k2").write_text("a-key-of-sixteen-bytes-2")
    dev1.start(150, "--key-file", str(keys / "k1"))
    wait_for("dev1 serves", serving(address, "dev1"))
    dev2.start(100, "--key-file", str(keys / "k2"))
    wait_for("dev2 is master too", lambda: role(dev2) == "master")
    wait_for("dev2 counts dropped adverts", lambda: current(dev2)["counters"]["advertsDropped"] > 0)
    doc = dev2.status()
    assert doc["addressHeld"] is False
    assert "Address already in use" in doc["addressError"]
    assert [answer(address) for _ in range(5)] == ["dev1"] * 5
    # When the holder goes, the other master binds at its next advert.
    dev1.stop(signal.SIGKILL)
    wait_for("dev2 serves", serving(address, "dev2"))


def test_equal_priorities_started_together_elect_one(pair: tuple[Agent, Agent, int]) -> None:
    dev1, dev2, address = pair
    dev1.start(100)
    dev2.start(100)
    wait_for(
        "one master, one backup",
        lambda: sorted([role(dev1) or "", role(dev2) or ""]) == ["backup", "master"],
    )
    master = dev1 if role(dev1) == "master" else dev2
    wait_for("the master serves", serving(address, master.name))


def test_errors_have_their_exit_codes(tmp_path: Path) -> None:
    bad = run_atoll(
        "failover", "run", "--name", "a", "--listen", "127.0.0.1:1", "--peer", "127.0.0.1:2",
        "--address", "127.0.0.1:3", "--backend", "127.0.0.1:4", "--priority", "300",
    )  # fmt: skip
    assert bad.returncode == 90
    assert "priority 300 is out of range 1-254" in bad.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = run_atoll(
            "failover", "run", "--name", "a", "--listen", f"127.0.0.1:{port}",
            "--peer", "127.0.0.1:2", "--address", "127.0.0.1:3", "--backend", "127.0.0.1:4",
            "--status-file", str(tmp_path / "a.json"),
        )  # fmt: skip
    assert busy.returncode == 91
    assert f"cannot receive adverts on 127.0.0.1:{port}: Address already in use" in busy.stderr
    missing = run_atoll("failover", "status", "--status-file", str(tmp_path / "none.json"))
    assert missing.returncode == 92
    assert "no failover status here" in missing.stderr
