"""What one failover agent is told: from the command line or a TOML file.

The file (``atoll failover run --config FILE``) holds one ``[failover]`` table::

    [failover]
    name = "dev1"                   # unique in the group; breaks priority ties
    group = 1                       # 1-255
    listen = "127.0.0.1:7101"       # where this agent receives adverts (UDP)
    peers = ["127.0.0.1:7102"]      # where the other agents receive theirs
    priority = 150                  # 1-254; the highest live agent serves
    interval = 1.0                  # seconds between adverts (0.01-40.95)
    preempt = false                 # take the address back from a lower master
    address = "127.0.0.1:8080"      # the service address the master listens on
    backend = "127.0.0.1:18081"     # where the master forwards connections
    status_file = "/run/atoll/failover/dev1.json"
    key_file = "/etc/atoll/failover.key"   # optional: HMAC-SHA256 key for adverts
    notify = ["/usr/local/bin/on-failover"]  # optional: run with the new role appended

Options given on the command line override the file.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll import stricttoml
from atoll.configfile import KeyLines, kind_of
from atoll.configfile import where as where_in
from atoll.errors import FailoverConfigError
from atoll.failover.protocol import MAX_INTERVAL_CS, MAX_NAME, MAX_PRIORITY, MIN_PRIORITY

DEFAULT_STATUS_DIR = Path("/run/atoll/failover")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> Endpoint:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise FailoverConfigError(
                f"{what} {text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8080 or [::1]:8080"
            )
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise FailoverConfigError(f"{what} {text!r}: port {port} is out of range")
        host = host.removeprefix("[").removesuffix("]")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise FailoverConfigError(
                f"{what} {text!r}: {host!r} is not an IP address",
                hint="give addresses as numbers, e.g. 127.0.0.1:8080",
            ) from None
        return cls(host, port)

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FailoverConfig:
    name: str
    listen: Endpoint
    peers: tuple[Endpoint, ...]
    address: Endpoint
    backend: Endpoint
    priority: int = 100
    group: int = 1
    interval: float = 1.0
    preempt: bool = False
    status_file: Path | None = None
    key: bytes | None = field(default=None, repr=False)
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > MAX_NAME:
            raise FailoverConfigError(f"name {self.name!r} must be 1-{MAX_NAME} bytes")
        if not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise FailoverConfigError(
                f"priority {self.priority} is out of range {MIN_PRIORITY}-{MAX_PRIORITY}"
            )
        if not 1 <= self.group <= 255:
            raise FailoverConfigError(f"group {self.group} is out of range 1-255")
        if not 0.01 <= self.interval <= MAX_INTERVAL_CS / 100:
            raise FailoverConfigError(
                f"interval {self.interval} s is out of range 0.01-{MAX_INTERVAL_CS / 100} s"
            )
        if not self.peers:
            raise FailoverConfigError("no peers: give at least one --peer HOST:PORT")
        if self.listen in self.peers:
            raise FailoverConfigError(f"peer {self.listen} is this agent's own listen address")
        if self.address == self.backend:
            raise FailoverConfigError(
                f"backend {self.backend} is the service address itself",
                hint="the workload listens on its own address; the master forwards to it",
            )
        if len(str(self.address).encode()) > 255:
            raise FailoverConfigError(f"address {self.address} is too long")

    @property
    def status_path(self) -> Path:
        return self.status_file or DEFAULT_STATUS_DIR / f"{self.name}.json"


_KEYS = {
    "name",
    "group",
    "listen",
    "peers",
    "priority",
    "interval",
    "preempt",
    "address",
    "backend",
    "status_file",
    "key_file",
    "notify",
}

#: How an error names the type a setting expects.
_EXPECTED = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
}


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> FailoverConfig:
    """The file's ``[failover]`` table (if *path*), with non-None *overrides* on top."""
    values: dict[str, Any] = {}
    where = "the command line"
    lines: KeyLines | None = None
    if path is not None:
        where = str(path)
        try:
            text = path.read_text()
            doc = stricttoml.loads(text)
        except OSError as exc:
            raise FailoverConfigError(f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise FailoverConfigError(f"{path}: {exc}") from None
        table = doc.get("failover")
        if not isinstance(table, dict):
            raise FailoverConfigError(f"{path}: no [failover] table")
        lines = KeyLines(text)
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            place = where_in(where, lines, ("failover", unknown[0]))
            raise FailoverConfigError(
                f"{place}unknown key failover.{unknown[0]}",
                hint=f"known: {', '.join(sorted(_KEYS))}",
            )
        values.update(table)
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    for required in ("name", "listen", "address", "backend"):
        if required not in values:
            raise FailoverConfigError(f"{where}: {required} is not set")
    try:
        return _build(values, where, lines if path is not None else None, overrides)
    except (TypeError, ValueError) as exc:
        raise FailoverConfigError(f"{where}: {exc}") from None


def _build(
    values: Mapping[str, Any],
    where: str,
    lines: KeyLines | None,
    overrides: Mapping[str, Any],
) -> FailoverConfig:
    def typed(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = values.get(key, default)
        if value is None:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML's true is a Python int too: only a bool setting takes it.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            # A value given on the command line has no line in the file.
            place = (
                "the command line: "
                if overrides.get(key) is not None
                else where_in(where, lines, ("failover", key))
            )
            expected = " or ".join(_EXPECTED[k] for k in kinds)
            raise FailoverConfigError(
                f"{place}failover.{key} has the wrong type ({value!r}): "
                f"expected {expected}, got {kind_of(value)}"
            )
        return value

    peers = typed("peers", list, [])
    notify = typed("notify", list, [])
    key_file = typed("key_file", str)
    key = None
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise FailoverConfigError(f"key file {key_file}: {exc.strerror}") from None
        if len(key) < 16:
            raise FailoverConfigError(f"key file {key_file}: the key must be 16 bytes or more")
    status = typed("status_file", str)
    return FailoverConfig(
        name=typed("name", str),
        listen=Endpoint.parse(typed("listen", str), "listen address"),
        peers=tuple(Endpoint.parse(str(p), "peer") for p in peers),
        address=Endpoint.parse(typed("address", str), "service address"),
        backend=Endpoint.parse(typed("backend", str), "backend"),
        priority=typed("priority", int, 100),
        group=typed("group", int, 1),
        interval=float(typed("interval", (int, float), 1.0)),
        preempt=bool(typed("preempt", bool, False)),
        status_file=Path(status) if status else None,
        key=key,
        notify=tuple(str(a) for a in notify),
    )
