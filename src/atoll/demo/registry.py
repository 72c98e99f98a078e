"""A local CNCF Distribution registry (Debian's ``docker-registry``) on loopback,
for the demo and for trying atoll out by hand."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import httpx

from atoll.errors import CommandError
from atoll.run import STDOUT, Process, TimeoutExpired, find_tool, spawn

_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def write_config(workdir: Path, port: int) -> Path:
    """The registry's config.yml: storage under *workdir*, plain HTTP on 127.0.0.1:*port*."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(_CONFIG.format(root=workdir / "storage", port=port))
    return config


def answers(host: str) -> bool:
    """True when the registry at *host* answers its API's version check."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://{host}/v2/", timeout=1).status_code == 200
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1, plain HTTP, deletes enabled."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._proc: Process | None = None

    def start(self, timeout: float = 20.0) -> None:
        binary = find_tool("docker-registry")
        config = write_config(self.workdir, self.port)
        log = (self.workdir / "registry.log").open("wb")
        self._proc = spawn([binary, "serve", config], stdout=log, stderr=STDOUT, new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise CommandError(
                    f"docker-registry exited with code {self._proc.returncode}; "
                    f"see {self.workdir / 'registry.log'}",
                    argv=[binary, "serve", str(config)],
                )
            if answers(self.host):
                return
            time.sleep(0.05)
        self.stop()
        raise CommandError(f"docker-registry did not answer on {self.host} within {timeout} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
