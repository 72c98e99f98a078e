"""A small LAN for container-boot devices, made of network namespaces only.

Every piece lives in a namespace of its own, named under ``/run/netns`` by
``ip netns`` (iproute2), so the host's interfaces, addresses and routing table
never see the LAN::

    netns NAME-lan        bridge "br0", up, no address
    │                     one veth end per member, "vm0", "vm1", ..., enslaved to br0
    ├── netns NAME-dev1   "eth0" (the other end of vm0), ADDRESS/PREFIX, up; "lo" up
    ├── netns NAME-dev2   "eth0" (the other end of vm1), ...
    └── netns NAME-client ...

A member is a device (``systemd-nspawn --network-namespace-path=/run/netns/NAME-dev1``
boots it there) or a client (``ip netns exec NAME-client ...``).  Deleting a
namespace deletes the veth ends in it, and with them the pair; :meth:`Lan.remove`
deletes the members first, then the bridge's namespace, and
:func:`remove_lan` does the same for a LAN whose maker died (every namespace whose
name starts with ``NAME-``).  A namespace that still holds a process (a device
that is still running) lives on after its name is deleted, until that process
ends: stop the devices first.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from atoll.errors import CommandError, InvalidInputError, NetworkSetupError
from atoll.run import find_tool, run

log = logging.getLogger(__name__)

#: Where ``ip netns`` names its namespaces.
NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
#: The member's end of its veth pair.
MEMBER_IFACE = "eth0"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


@dataclass
class Lan:
    """A LAN made by :meth:`create`; as a context manager it removes itself::

    with Lan.create("t1") as lan:
        lan.add("dev1", "10.99.0.11/24")
    """

    name: str
    members: dict[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface] = field(
        default_factory=dict
    )

    @property
    def bridge_netns(self) -> str:
        return f"{self.name}-lan"

    def netns(self, member: str) -> str:
        return f"{self.name}-{member}"

    def path(self, member: str) -> Path:
        return netns_path(self.netns(member))

    @classmethod
    def create(cls, name: str) -> Lan:
        """The bridge's namespace with its bridge up; nothing is left if this fails."""
        _check_name(name, "LAN name")
        lan = cls(name)
        if netns_path(lan.bridge_netns).exists():
            raise NetworkSetupError(
                f"network namespace {lan.bridge_netns} exists already",
                hint=f"remove the old LAN first: ip netns delete {lan.bridge_netns}",
            )
        try:
            _ip("netns", "add", lan.bridge_netns)
            _ip("-n", lan.bridge_netns, "link", "add", BRIDGE, "type", "bridge")
            # No forwarding delay: a port forwards as soon as it is up.
            _ip(
                "-n",
                lan.bridge_netns,
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "forward_delay",
                "0",
            )
            _ip("-n", lan.bridge_netns, "link", "set", BRIDGE, "up")
        except BaseException:
            lan.remove()
            raise
        return lan

    def add(self, member: str, address: str) -> Path:
        """A namespace for *member*, joined to the bridge, with *address*
        (``A.B.C.D/PREFIX``) on its ``eth0``; returns its path for nspawn."""
        _check_name(member, "member name")
        if member == "lan" or member in self.members:
            raise InvalidInputError(f"LAN {self.name} has a member {member!r} already")
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            raise InvalidInputError(
                f"address {address!r} is not ADDRESS/PREFIX", hint="e.g. 10.99.0.11/24"
            ) from None
        netns, port = self.netns(member), f"vm{len(self.members)}"
        self.members[member] = iface
        _ip("netns", "add", netns)
        _ip("-n", self.bridge_netns, "link", "add", port, "type", "veth",
            "peer", "name", MEMBER_IFACE, "netns", netns)  # fmt: skip
        _ip("-n", self.bridge_netns, "link", "set", port, "master", BRIDGE, "up")
        _ip("-n", netns, "addr", "add", str(iface), "dev", MEMBER_IFACE)
        _ip("-n", netns, "link", "set", MEMBER_IFACE, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        return self.path(member)

    def unplug(self, member: str) -> None:
        """Take *member*'s link down and its addresses away, as from a machine
        whose power went: nothing in its namespace answers on the LAN any more."""
        netns = self.netns(member)
        _ip("-n", netns, "link", "set", MEMBER_IFACE, "down")
        _ip("-n", netns, "addr", "flush", "dev", MEMBER_IFACE)

    def plug(self, member: str) -> None:
        """Undo :meth:`unplug`: *member*'s own address, and the link up."""
        netns = self.netns(member)
        _ip("-n", netns, "addr", "add", str(self.members[member]), "dev", MEMBER_IFACE)
        _ip("-n", netns, "link", "set", MEMBER_IFACE, "up")

    def remove(self) -> None:
        """Delete every namespace of the LAN; those already gone are no error."""
        remove_lan(self.name)

    def __enter__(self) -> Lan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def lan_namespaces(name: str) -> list[str]:
    """The namespaces of LAN *name* that exist: members first, the bridge's last."""
    try:
        names = sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []
    found = [n for n in names if n.startswith(f"{name}-")]
    bridge = f"{name}-lan"
    return [n for n in found if n != bridge] + ([bridge] if bridge in found else [])


def remove_lan(name: str) -> list[str]:
    """Delete every namespace of LAN *name* (also after its maker died); return their names."""
    _check_name(name, "LAN name")
    removed, failed = [], []
    for netns in lan_namespaces(name):
        try:
            _ip("netns", "delete", netns)
            removed.append(netns)
        except NetworkSetupError as exc:
            failed.append(f"{netns}: {exc}")
    if failed:
        raise NetworkSetupError(f"cannot remove network namespaces: {'; '.join(failed)}")
    return removed


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"{what} {name!r} is not valid: 1-32 of a-z, 0-9, '.', '_', '-', not first"
        )


def _ip(*args: str) -> None:
    argv = [find_tool("ip", "iproute2"), *args]
    try:
        run(argv)
    except CommandError as exc:
        raise NetworkSetupError(f"ip {' '.join(args)}: {exc.stderr_tail or exc}") from None
