"""Failover by keepalived: atoll's settings in, keepalived.conf out, keepalived's state back.

atoll does not speak VRRP here; keepalived (the distribution's package) does.
atoll writes and checks its configuration and reads its state.  The settings
file (``/etc/atoll/failover.toml``, version 1) holds one ``[failover]`` table::

    [failover]
    instance = "web"                    # vrrp_instance name (default "atoll")
    router_id = 51                      # virtual_router_id, 1-255, the same on every peer
    interface = "eth0"                  # where adverts go and the address is added
    address = "10.99.0.100/24"          # the virtual IP with its prefix
    priority = 150                      # 1-254; the highest live device is master
    interval = 0.2                      # advert_int in seconds, 0.01-40.95 (VRRPv3)
    preempt = false                     # default: nopreempt (a master stays master)
    source = "10.99.0.11"               # unicast_src_ip (optional)
    peers = ["10.99.0.12"]              # unicast_peer; none: multicast to 224.0.0.18
    check = ["/usr/local/bin/web-health"]      # track_script: non-zero hands over
    check_interval = 1                  # whole seconds between checks (keepalived's unit)
    check_timeout = 1                   # whole seconds; a check that takes longer failed
    fall = 1                            # failures before the device gives up the address
    rise = 1                            # successes before it may hold it again
    notify_master = ["/usr/bin/systemctl", "start", "web.service"]   # optional,
    notify_backup = []                  # like notify_fault and notify_stop
    notify_fault = []
    notify_stop = []

Every value is checked before anything is written: names and words of commands
are limited to characters that need no quoting in keepalived's syntax, commands
are absolute paths (keepalived's ``enable_script_security`` wants them so), and
addresses are parsed as addresses.

keepalived's state: on the signal ``keepalived --signum=JSON`` names, the
running keepalived (pid in ``/run/keepalived.pid``) writes every instance to
``/tmp/keepalived.json``; :func:`read_state` sends it, waits for the new file
and returns one :class:`InstanceState` per instance.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll import stricttoml
from atoll.configfile import KeyLines, kind_of, where
from atoll.errors import KeepalivedConfigError, KeepalivedStateError
from atoll.run import find_tool, run
from atoll.timeutil import utc_timestamp

SETTINGS_VERSION = 1
DEFAULT_SETTINGS = Path("/etc/atoll/failover.toml")
DEFAULT_CONFIG = Path("/etc/keepalived/keepalived.conf")
DEFAULT_PID_FILE = Path("/run/keepalived.pid")
DEFAULT_JSON_FILE = Path("/tmp/keepalived.json")
#: The name of the track_script atoll writes.
CHECK_SCRIPT = "atoll_check"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# A word keepalived reads as itself inside "...": no quotes, spaces, comments or escapes.
_WORD = re.compile(r"[A-Za-z0-9_./:=@%+,-]+")
_NOTIFY = ("notify_master", "notify_backup", "notify_fault", "notify_stop")
#: keepalived's VRRP states (vrrp.h) as the JSON dump gives them.
STATES = {0: "INIT", 1: "BACKUP", 2: "MASTER", 3: "FAULT", 97: "DELETED", 98: "STOP"}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class KeepalivedSettings:
    interface: str
    address: Interface
    instance: str = "atoll"
    router_id: int = 51
    priority: int = 100
    interval: float = 1.0
    preempt: bool = False
    source: Address | None = None
    peers: tuple[Address, ...] = ()
    check: tuple[str, ...] = ()
    check_interval: int = 1
    check_timeout: int = 1
    fall: int = 1
    rise: int = 1
    notify_master: tuple[str, ...] = ()
    notify_backup: tuple[str, ...] = ()
    notify_fault: tuple[str, ...] = ()
    notify_stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(
            _NAME.fullmatch(self.instance),
            f"instance {self.instance!r}: use 1-32 of A-Z a-z 0-9 _ -",
        )
        _require(
            _IFACE.fullmatch(self.interface),
            f"interface {self.interface!r} is not an interface name",
        )
        _require(1 <= self.router_id <= 255, f"router_id {self.router_id} is out of range 1-255")
        # 255 is the address owner's priority in VRRP; a device never owns the VIP.
        _require(1 <= self.priority <= 254, f"priority {self.priority} is out of range 1-254")
        _require(
            0.01 <= self.interval <= 40.95 and round(self.interval * 100) == self.interval * 100,
            f"interval {self.interval} s: VRRPv3 takes 0.01-40.95 s in steps of 0.01 s",
        )
        for key in ("check_interval", "check_timeout"):
            value = getattr(self, key)
            _require(1 <= value <= 4294, f"{key} {value}: keepalived takes 1-4294 whole seconds")
        _require(1 <= self.fall <= 255 and 1 <= self.rise <= 255, "fall and rise must be 1-255")
        for peer in self.peers:
            _require(
                peer.version == self.address.version, f"peer {peer}: not IPv{self.address.version}"
            )
            _require(peer != self.source, f"peer {peer} is this device's own source address")
        if self.source is not None:
            _require(
                self.source.version == self.address.version, f"source {self.source}: wrong family"
            )
        _require(not self.source or self.peers, "source is set but there are no peers to send to")
        for key in ("check", *_NOTIFY):
            _check_command(key, getattr(self, key))


def _require(ok: object, message: str) -> None:
    if not ok:
        raise KeepalivedConfigError(message)


def _check_command(key: str, argv: Sequence[str]) -> None:
    if not argv:
        return
    if not argv[0].startswith("/"):
        raise KeepalivedConfigError(
            f"{key}: {argv[0]!r} is not an absolute path",
            hint="keepalived runs scripts by absolute path, e.g. /usr/bin/systemctl",
        )
    for word in argv:
        if not _WORD.fullmatch(word):
            raise KeepalivedConfigError(
                f"{key}: {word!r} cannot be passed to keepalived as it is",
                hint="use letters, digits and _ . / : = @ % + , - only; "
                "put anything else in a script",
            )


# --- the settings file ------------------------------------------------------------------


def _interface(text: str) -> Interface:
    if "/" not in text:
        raise KeepalivedConfigError(f"address {text!r} has no prefix", hint="e.g. 10.99.0.100/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise KeepalivedConfigError(f"address {text!r} is not ADDRESS/PREFIX") from None


def _address(text: object, what: str) -> Address:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise KeepalivedConfigError(f"{what} {text!r} is not an IP address") from None


def _argv(value: list[Any], key: str) -> tuple[str, ...]:
    if not all(isinstance(word, str) for word in value):
        raise KeepalivedConfigError(f"{key} must be a list of strings")
    return tuple(value)


#: Key -> (accepted TOML types, converter to the dataclass's field).
_FIELDS: dict[str, tuple[tuple[type, ...], Callable[[Any], Any]]] = {
    "instance": ((str,), str),
    "router_id": ((int,), int),
    "interface": ((str,), str),
    "address": ((str,), _interface),
    "priority": ((int,), int),
    "interval": ((int, float), float),
    "preempt": ((bool,), bool),
    "source": ((str,), lambda v: _address(v, "source")),
    "peers": ((list,), lambda v: tuple(_address(p, "peer") for p in v)),
    "check": ((list,), functools.partial(_argv, key="check")),
    "check_interval": ((int,), int),
    "check_timeout": ((int,), int),
    "fall": ((int,), int),
    "rise": ((int,), int),
    **{key: ((list,), functools.partial(_argv, key=key)) for key in _NOTIFY},
}


def load_settings(path: Path) -> KeepalivedSettings:
    """The ``[failover]`` table of *path*, checked whole."""
    try:
        text = path.read_text()
        doc = stricttoml.loads(text)
    except OSError as exc:
        raise KeepalivedConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeepalivedConfigError(f"{path}: {exc}") from None
    table = doc.get("failover")
    if not isinstance(table, dict):
        raise KeepalivedConfigError(f"{path}: no [failover] table")
    return settings_from(table, str(path), KeyLines(text))


def settings_from(
    table: Mapping[str, Any], source: str = "settings", lines: KeyLines | None = None
) -> KeepalivedSettings:
    values: dict[str, Any] = {}
    for key, value in table.items():
        place = where(source, lines, ("failover", key))
        if key not in _FIELDS:
            raise KeepalivedConfigError(
                f"{place}unknown key failover.{key}", hint=f"known: {', '.join(sorted(_FIELDS))}"
            )
        kinds, convert = _FIELDS[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise KeepalivedConfigError(
                f"{place}failover.{key} has the wrong type: expected "
                f"{' or '.join(k.__name__ for k in kinds)}, got {kind_of(value)}"
            )
        try:
            values[key] = convert(value)
        except KeepalivedConfigError as exc:
            raise KeepalivedConfigError(f"{place}{exc}", hint=exc.hint) from None
    for required in ("interface", "address"):
        if required not in values:
            raise KeepalivedConfigError(f"{source}: failover.{required} is not set")
    try:
        return KeepalivedSettings(**values)
    except KeepalivedConfigError as exc:
        raise KeepalivedConfigError(f"{source}: {exc}", hint=exc.hint) from None


# --- keepalived.conf --------------------------------------------------------------------


def render_config(settings: KeepalivedSettings, source: str = "") -> str:
    """keepalived.conf for *settings*: one VRRPv3 instance, state BACKUP at start."""
    s = settings
    origin = f" from {source}" if source else ""
    out = [
        f"# Written by atoll failover config{origin}; changes here are overwritten.",
        "global_defs {",
        "    vrrp_version 3",
        "    enable_script_security",
        "    script_user root",
        "}",
    ]
    if s.check:
        out += [
            f"vrrp_script {CHECK_SCRIPT} {{",
            f"    script {_quoted(s.check)}",
            f"    interval {s.check_interval}",
            f"    timeout {s.check_timeout}",
            f"    fall {s.fall}",
            f"    rise {s.rise}",
            "}",
        ]
    out += [
        f"vrrp_instance {s.instance} {{",
        # Both start as backup: the first adverts decide, and nopreempt needs it.
        "    state BACKUP",
        f"    interface {s.interface}",
        f"    virtual_router_id {s.router_id}",
        f"    priority {s.priority}",
        f"    advert_int {_seconds(s.interval)}",
    ]
    if not s.preempt:
        out.append("    nopreempt")
    if s.source is not None:
        out.append(f"    unicast_src_ip {s.source}")
    if s.peers:
        out += ["    unicast_peer {", *(f"        {p}" for p in s.peers), "    }"]
    out += ["    virtual_ipaddress {", f"        {s.address} dev {s.interface}", "    }"]
    if s.check:
        out += ["    track_script {", f"        {CHECK_SCRIPT}", "    }"]
    for key in _NOTIFY:
        argv = getattr(s, key)
        if argv:
            out.append(f"    {key} {_quoted(argv)}")
    out.append("}")
    return "\n".join(out) + "\n"


def _quoted(argv: Sequence[str]) -> str:
    return '"' + " ".join(argv) + '"'


def _seconds(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def check_config(path: Path) -> None:
    """keepalived's own test of the file at *path* (``keepalived -t``)."""
    keepalived = find_tool("keepalived", why="it checks the configuration it will read")
    proc = run([keepalived, "-t", "-f", str(path), "--log-console"], check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise KeepalivedConfigError(
            f"keepalived rejects {path}: {lines[-1] if lines else f'exit code {proc.returncode}'}"
        )


# --- keepalived's state -----------------------------------------------------------------


@dataclass(frozen=True)
class InstanceState:
    instance: str
    state: str
    priority: int
    base_priority: int
    router_id: int
    interface: str
    addresses: tuple[str, ...]
    holds_addresses: bool
    since: str
    interval: float
    adverts_sent: int
    adverts_received: int
    became_master: int
    released_master: int

    @classmethod
    def from_dump(cls, item: Mapping[str, Any]) -> InstanceState:
        data, stats = item["data"], item["stats"]
        return cls(
            instance=str(data["iname"]),
            state=STATES.get(int(data["state"]), f"UNKNOWN({data['state']})"),
            priority=int(data["effective_priority"]),
            base_priority=int(data["base_priority"]),
            router_id=int(data["vrid"]),
            interface=str(data["ifp_ifname"]),
            addresses=tuple(str(v).split()[0] for v in data.get("vips", [])),
            holds_addresses=bool(data["vipset"]),
            since=utc_timestamp(float(data["last_transition"]), digits=2),
            interval=float(data["adver_int"]),
            adverts_sent=int(stats["advert_sent"]),
            adverts_received=int(stats["advert_rcvd"]),
            became_master=int(stats["become_master"]),
            released_master=int(stats["release_master"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "state": self.state,
            "priority": self.priority,
            "basePriority": self.base_priority,
            "routerId": self.router_id,
            "interface": self.interface,
            "addresses": list(self.addresses),
            "holdsAddresses": self.holds_addresses,
            "since": self.since,
            "interval": self.interval,
            "advertsSent": self.adverts_sent,
            "advertsReceived": self.adverts_received,
            "becameMaster": self.became_master,
            "releasedMaster": self.released_master,
        }


def read_state(
    pid_file: Path = DEFAULT_PID_FILE,
    json_file: Path = DEFAULT_JSON_FILE,
    *,
    timeout: float = 5.0,
) -> list[InstanceState]:
    """Ask the running keepalived for its state and return its instances."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        raise KeepalivedStateError(
            f"keepalived is not running (no live process in {pid_file})",
            hint="start it: systemctl start keepalived",
        ) from None
    keepalived = find_tool("keepalived", why="it names the signal that dumps its state")
    signum = int(run([keepalived, "--signum=JSON"]).stdout.decode().strip())
    try:
        before = json_file.stat().st_mtime_ns
    except FileNotFoundError:
        before = -1
    os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json_file.stat().st_mtime_ns != before:
                items = json.loads(json_file.read_text())
                return [InstanceState.from_dump(item) for item in items]
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            pass  # still being written, or not keepalived's: look again
        if time.monotonic() > deadline:
            raise KeepalivedStateError(
                f"keepalived (pid {pid}) wrote no state to {json_file} within {timeout:g} s",
                hint="keepalived writes it to its own /tmp: run this where keepalived runs",
            )
        time.sleep(0.02)
