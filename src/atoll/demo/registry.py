"""A local CNCF Distribution registry (Debian's ``docker-registry``) on loopback,
for the demo, the benchmarks, the tests and for trying atoll out by hand.

One helper for all of them: the tests' registries (Basic and token auth, TLS)
are this one with an ``auth`` or ``tls`` section in its configuration.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from atoll.errors import CommandError
from atoll.run import STDOUT, Process, TimeoutExpired, dies_with_caller, find_tool, spawn

#: Tries with a new free port when the registry does not come up on the first.
_TRIES = 3


def registry_config(
    workdir: Path,
    port: int,
    *,
    auth: Mapping[str, object] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> dict[str, object]:
    """Storage under *workdir*, deletes enabled, listening on 127.0.0.1:*port*;
    *auth*: the registry's ``auth`` section; *tls*: (certificate, key)."""
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth:
        config["auth"] = dict(auth)
    return config


def write_config(
    workdir: Path,
    port: int,
    *,
    auth: Mapping[str, object] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Path:
    """The registry's config.yml (:func:`registry_config`; JSON is YAML)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    data = registry_config(workdir, port, auth=auth, tls=tls)
    config.write_text(json.dumps(data, indent=2) + "\n")
    return config


def answers(host: str, *, scheme: str = "http", ca: Path | None = None) -> bool:
    """True when the registry at *host* answers its API's version check (an
    authenticating registry answers 401)."""
    verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=ca) if ca else True
    with contextlib.suppress(httpx.HTTPError):
        code = httpx.get(f"{scheme}://{host}/v2/", timeout=1, verify=verify).status_code
        return code in (200, 401)
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1, deletes enabled; plain HTTP, or
    HTTPS with *tls* (its certificate is signed by *ca_path*); *auth* as the
    registry's ``auth`` section.  It ends with the process that started it."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        auth: Mapping[str, object] | None = None,
        tls: tuple[Path, Path] | None = None,
        ca_path: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.auth = auth
        self.tls = tls
        self.ca_path = ca_path
        self._proc: Process | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self, timeout: float = 20.0) -> None:
        binary = find_tool("docker-registry")
        log_path = self.workdir / "registry.log"
        for attempt in range(1 if self._fixed_port else _TRIES):
            if attempt:
                self.port = free_port()  # another process took the port: try another
            config = write_config(self.workdir, self.port, auth=self.auth, tls=self.tls)
            with log_path.open("ab") as log:
                self._proc = spawn(
                    dies_with_caller([binary, "serve", str(config)]),
                    stdout=log,
                    stderr=STDOUT,
                    new_session=True,
                )
            if self._wait_ready(timeout):
                return
            self.stop()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise CommandError(
            f"docker-registry did not answer on {self.host} within {timeout} s: "
            + (" | ".join(tail) or f"see {log_path}"),
            argv=[binary, "serve", str(self.workdir / "config.yml")],
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if answers(self.host, scheme=self.scheme, ca=self.ca_path):
                return True
            time.sleep(0.05)
        return False

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
