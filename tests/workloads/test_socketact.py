"""Socket activation: ``NAME.socket`` units, the proxy, and the whole thing with podman."""

from __future__ import annotations

import socket
import socketserver
import threading
from pathlib import Path

import pytest

from atoll.errors import QuadletUnitError
from atoll.workloads.control import UnitState, UnitStatus
from atoll.workloads.unitfiles.quadlet import ContainerOptions
from atoll.workloads.unitfiles.socketact import (
    SocketActivator,
    load_sockets,
    parse_address,
    parse_socket_unit,
    published_target,
)
from helpers.workloads import WorkloadEnv, free_port, http_get, wait_for


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text, what="ListenStream", default_host="0.0.0.0") == address


@pytest.mark.parametrize("text", ["/run/web.sock", "web:http", "127.0.0.1:70000", ""])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(QuadletUnitError, match="not a TCP address"):
        parse_address(text, what="ListenStream", default_host="0.0.0.0")


def test_socket_unit(tmp_path: Path) -> None:
    path = tmp_path / "web.socket"
    path.write_text(
        "[Unit]\nDescription=web\n[Socket]\nListenStream=127.0.0.1:8080\n"
        "IdleTimeoutSec=30s\nProxyTo=18080\nBacklog=5\n[Install]\nWantedBy=sockets.target\n"
    )
    unit, warnings = parse_socket_unit(path)
    assert unit.listen == ("127.0.0.1", 8080)
    assert unit.service == "web.service"
    assert unit.proxy_to == ("127.0.0.1", 18080)
    assert unit.idle_timeout == 30
    assert [w.line for w in warnings] == [7]  # Backlog= is not supported
    (tmp_path / "empty.socket").write_text("[Socket]\n")
    with pytest.raises(QuadletUnitError, match="no ListenStream"):
        load_sockets([tmp_path])


def test_published_target() -> None:
    def target(*ports: str) -> tuple[str, int] | None:
        return published_target(ContainerOptions(image="x", publish_port=ports))

    assert target("127.0.0.1:18080:80") == ("127.0.0.1", 18080)
    assert target("18080:80") == ("127.0.0.1", 18080)
    assert target("0.0.0.0:18080:80/tcp") == ("127.0.0.1", 18080)
    assert target("5353:53/udp", "8443:443") == ("127.0.0.1", 8443)
    assert target("80") is None
    assert target() is None


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data.upper())


def test_activator_starts_on_first_connection_and_stops_when_idle(tmp_path: Path) -> None:
    """The workload is a real TCP server in this process; start/stop stand in for the
    supervisor (which the end-to-end test below uses)."""
    backend = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    events: list[str] = []
    stopped = threading.Event()
    path = tmp_path / "echo.socket"
    port = free_port()
    path.write_text(f"[Socket]\nListenStream=127.0.0.1:{port}\nIdleTimeoutSec=0.5\n")
    unit, _ = parse_socket_unit(path)
    activator = SocketActivator(
        unit,
        backend.server_address[:2],  # type: ignore[arg-type]
        start=lambda: events.append("start"),
        stop=lambda: (events.append("stop"), stopped.set()),
        is_active=lambda: events[-1:] == ["start"],
    )
    activator.open()
    try:
        assert events == []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"ping")
            assert client.recv(1024) == b"PING"
        assert events[0] == "start"
        assert stopped.wait(30)
        assert events == ["start", "stop"]
    finally:
        activator.close()
        backend.shutdown()
        backend.server_close()


@pytest.mark.integration
@pytest.mark.slow
def test_socket_activation_with_podman(workload_env: WorkloadEnv) -> None:
    workload_env.web_unit("lazy", page="started on demand\n")
    listen = free_port()
    workload_env.unit(
        "web.socket", f"[Socket]\nListenStream=127.0.0.1:{listen}\nIdleTimeoutSec=2s\n"
    )
    sup = workload_env.start_supervisor()
    assert sup.status("web").state is UnitState.INACTIVE  # not started before a client
    assert workload_env.podman("ps", "--format", "{{.Names}}").split() == []

    # The control socket answers only once the socket units listen: connect at once.
    assert http_get(listen, timeout=60) == "started on demand\n"
    assert "web.service: active" in sup.output()  # (it may be idle again already)

    def idle_stopped() -> UnitStatus | None:
        status = sup.status("web")
        return status if status.state is UnitState.INACTIVE else None

    wait_for(idle_stopped, "the idle workload to be stopped", 60)
    assert workload_env.podman("ps", "--format", "{{.Names}}").split() == []
    assert http_get(listen, timeout=60) == "started on demand\n"  # and started again
    assert sup.stop() == 0
