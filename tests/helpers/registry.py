"""pytest plugin: real Distribution registries on loopback, and a fault proxy.

Servers live for the whole session and start on first use, each on a free port
of 127.0.0.1 with its own storage, and are killed at the end:

=================  ==========================================================
``registry``       plain HTTP, anonymous
``auth_registry``  plain HTTP, Basic auth from an htpasswd (bcrypt) file
``tls_registry``   HTTPS with a certificate from a throw-away CA (openssl)
``token_registry`` plain HTTP, Bearer tokens from :mod:`helpers.token_server`
``fault_proxy``    an HTTP proxy in front of the plain registry, programmable
=================  ==========================================================

The fixtures themselves are per test: each returns a :class:`RegistryView`
that has written what the test's own configuration needs (an ``insecure``
entry in ``$CONTAINERS_REGISTRIES_CONF``; the CA in
``$XDG_CONFIG_HOME/containers/certs.d/HOST/``) and builds a working
``SystemContext`` with :meth:`RegistryView.ctx`.  Tests share the servers, so
each uses its own repository names (:meth:`RegistryView.new_repo`).

Images for tests are pushed with skopeo, so atoll never sets up its own tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from atoll.demo.registry import LocalRegistry
from atoll.errors import CommandError
from atoll.oci.context import SystemContext
from helpers.fault_proxy import FaultProxy
from helpers.images import BuiltImage, build_image
from helpers.parts import missing, require_tool

if TYPE_CHECKING:
    from helpers.token_server import TokenServer

USERNAME = "atoll"
PASSWORD = "s3cret-passw0rd"
TOKEN_SERVICE = "atoll-test-registry"
TOKEN_ISSUER = "atoll-test-issuer"
_START_TIMEOUT = 15.0


class RegistryServer(LocalRegistry):
    """One ``docker-registry serve`` process (atoll.demo.registry's)."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        *,
        auth: dict[str, Any] | None = None,
        tls: tuple[Path, Path] | None = None,
        ca_path: Path | None = None,
        cert_dir: Path | None = None,
        token_server: TokenServer | None = None,
    ) -> None:
        require_tool("docker-registry")
        super().__init__(workdir, auth=auth, tls=tls, ca_path=ca_path)
        self.kind = kind
        #: For the TLS registry: a cert dir holding only the CA (for skopeo).
        self.cert_dir = cert_dir
        self.token_server = token_server

    def start(self, timeout: float = _START_TIMEOUT) -> None:
        try:
            super().start(timeout)
        except CommandError as exc:
            pytest.fail(f"{self.kind} registry did not start: {exc}")


@dataclass
class RegistryView:
    """What a test gets: one server, configured for this test's environment."""

    server: RegistryServer
    tmp_path: Path
    policy: Path
    username: str | None = None
    password: str | None = None
    #: The host clients talk to (the proxy's, for the fault proxy).
    host: str = ""
    _pushed: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.host = self.host or self.server.host

    @property
    def url(self) -> str:
        return f"{self.server.scheme}://{self.host}"

    @property
    def ca_path(self) -> Path | None:
        return self.server.ca_path

    @property
    def token_server(self) -> TokenServer | None:
        return self.server.token_server

    @property
    def credentials(self) -> str | None:
        return f"{self.username}:{self.password}" if self.username else None

    def ctx(self, **overrides: Any) -> SystemContext:
        """A context that reaches this registry (credentials included), fast retries."""
        settings: dict[str, Any] = {
            "credentials": self.credentials,
            "retry_delay": 0.01,
            "timeout": 10.0,
            "environ": dict(os.environ),
        }
        settings.update(overrides)
        return SystemContext(**settings)

    def new_repo(self, prefix: str = "test") -> str:
        """A repository name no other test uses."""
        return f"{prefix}/{secrets.token_hex(4)}"

    def skopeo_args(self, direction: str = "") -> list[str]:
        """skopeo flags to reach this registry: *direction* "src" or "dest" for
        ``skopeo copy``, "" for commands with one image (inspect, delete, list-tags)."""
        if direction not in ("src", "dest", ""):
            raise ValueError(direction)
        prefix = f"--{direction}-" if direction else "--"
        if self.server.tls:
            args = [f"{prefix}cert-dir", str(self.server.cert_dir)]
        else:
            args = [f"{prefix}tls-verify=false"]
        if self.credentials:
            args += [f"{prefix}creds", self.credentials]
        return args

    def skopeo(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run skopeo with the test's policy; fail the test with its stderr if it fails."""
        skopeo = require_tool("skopeo")
        proc = subprocess.run(
            [skopeo, "--policy", str(self.policy), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def push_test_image(self, repo: str, tag: str = "latest", **kwargs: Any) -> BuiltImage:
        """Build an image with helpers.images and push it with skopeo to REPO:TAG."""
        self._pushed += 1
        layout = self.tmp_path / f"push-{self._pushed}"
        image = build_image(layout, tag, **kwargs)
        self.skopeo(
            "copy",
            "--quiet",
            *self.skopeo_args("dest"),
            f"oci:{layout}:{tag}",
            f"docker://{self.server.host}/{repo}:{tag}",
        )
        return image


class FaultProxyView(RegistryView):
    """The plain registry seen through the fault proxy (``.proxy`` to program it)."""

    proxy: FaultProxy
    #: The registry behind the proxy, to set up images without faults.
    registry: RegistryView

    def __getattr__(self, name: str) -> Any:
        # fail, serve, truncate, seen, requests ... are the proxy's.
        proxy = self.__dict__.get("proxy")
        if proxy is None:
            raise AttributeError(name)
        return getattr(proxy, name)


# --- session servers --------------------------------------------------------------


class _Servers:
    """Starts each server on first use; stops them all at the end of the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: dict[str, RegistryServer] = {}
        self.proxy: FaultProxy | None = None
        self.policy = root / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')

    def get(self, kind: str) -> RegistryServer:
        if kind not in self.started:
            server = getattr(self, f"_make_{kind}")()
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            self.started[kind] = server
        return self.started[kind]

    def _make_plain(self) -> RegistryServer:
        return RegistryServer("plain", self.root / "plain")

    def _make_basic(self) -> RegistryServer:
        htpasswd = require_tool("htpasswd", "apache2-utils")
        workdir = self.root / "basic"
        workdir.mkdir(parents=True)
        line = subprocess.run(
            [htpasswd, "-Bbn", USERNAME, PASSWORD],
            capture_output=True,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
        (workdir / "htpasswd").write_bytes(line.strip() + b"\n")
        auth = {"htpasswd": {"realm": "atoll-test", "path": str(workdir / "htpasswd")}}
        return RegistryServer("basic", workdir, auth=auth)

    def _make_tls(self) -> RegistryServer:
        workdir = self.root / "tls"
        ca, cert, key = _make_certificates(workdir / "pki")
        cert_dir = workdir / "certs.d"
        cert_dir.mkdir()
        shutil.copy(ca, cert_dir / "ca.crt")
        return RegistryServer("tls", workdir, tls=(cert, key), ca_path=ca, cert_dir=cert_dir)

    def _make_token(self) -> RegistryServer:
        try:
            from helpers.token_server import TokenServer
        except ImportError as exc:
            missing(f"the token server needs {exc.name} (pip install cryptography)")
            raise
        workdir = self.root / "token"
        workdir.mkdir(parents=True)
        tokens = TokenServer(TOKEN_ISSUER, TOKEN_SERVICE, {USERNAME: PASSWORD})
        tokens.start()
        auth = {
            "token": {
                "realm": tokens.realm,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(tokens.write_root_bundle(workdir / "token-root.pem")),
            }
        }
        return RegistryServer("token", workdir, auth=auth, token_server=tokens)

    def fault_proxy(self) -> FaultProxy:
        if self.proxy is None:
            self.proxy = FaultProxy(self.get("plain").host)
            self.proxy.start()
        return self.proxy

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for server in self.started.values():
            server.stop()
            if server.token_server is not None:
                server.token_server.stop()


def _make_certificates(pki: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost, made with openssl."""
    openssl = require_tool("openssl")
    pki.mkdir(parents=True)

    def run(*args: str) -> None:
        proc = subprocess.run(
            [openssl, *args], cwd=pki, capture_output=True, stdin=subprocess.DEVNULL, check=False
        )
        if proc.returncode != 0:
            pytest.fail(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace')}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3",
        "-subj", "/CN=atoll test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (pki / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "3", "-extfile", "server.ext",
    )  # fmt: skip
    return pki / "ca.crt", pki / "server.crt", pki / "server.key"


@pytest.fixture(scope="session")
def registry_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Servers]:
    servers = _Servers(tmp_path_factory.mktemp("registries"))
    try:
        yield servers
    finally:
        servers.stop()


# --- per-test fixtures --------------------------------------------------------------


def _mark_insecure(host: str) -> None:
    """Add an ``insecure = true`` entry for *host* to this test's registries.conf."""
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if not conf:
        missing("CONTAINERS_REGISTRIES_CONF is not set (the hermetic fixture sets it)")
        return
    path = Path(conf)
    existing = path.read_text() if path.exists() else ""
    entry = f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n'
    path.write_text(existing + entry)


def _trust_ca(server: RegistryServer) -> None:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    target = config_home / "containers" / "certs.d" / server.host
    target.mkdir(parents=True, exist_ok=True)
    assert server.ca_path is not None
    shutil.copy(server.ca_path, target / "ca.crt")


def _view(servers: _Servers, kind: str, tmp_path: Path, **kwargs: Any) -> RegistryView:
    server = servers.get(kind)
    return RegistryView(server, tmp_path, servers.policy, **kwargs)


@pytest.fixture
def registry(registry_servers: _Servers, tmp_path: Path) -> RegistryView:
    view = _view(registry_servers, "plain", tmp_path)
    _mark_insecure(view.host)
    return view


@pytest.fixture
def auth_registry(registry_servers: _Servers, tmp_path: Path) -> RegistryView:
    view = _view(registry_servers, "basic", tmp_path, username=USERNAME, password=PASSWORD)
    _mark_insecure(view.host)
    return view


@pytest.fixture
def tls_registry(registry_servers: _Servers, tmp_path: Path) -> RegistryView:
    view = _view(registry_servers, "tls", tmp_path)
    _trust_ca(view.server)
    return view


@pytest.fixture
def token_registry(registry_servers: _Servers, tmp_path: Path) -> Iterator[RegistryView]:
    view = _view(registry_servers, "token", tmp_path, username=USERNAME, password=PASSWORD)
    assert view.token_server is not None
    view.token_server.reset()
    _mark_insecure(view.host)
    yield view
    view.token_server.reset()


@pytest.fixture
def fault_proxy(registry_servers: _Servers, tmp_path: Path) -> Iterator[FaultProxyView]:
    proxy = registry_servers.fault_proxy()
    proxy.reset()
    upstream = _view(registry_servers, "plain", tmp_path)
    view = FaultProxyView(upstream.server, tmp_path, registry_servers.policy, host=proxy.host)
    view.proxy = proxy
    view.registry = upstream
    _mark_insecure(upstream.host)
    _mark_insecure(proxy.host)
    yield view
    proxy.reset()
