"""The advert: what failover agents send each other, one UDP datagram each.

Wire format, version 1 (all integers big-endian)::

    offset  size  field
    0       4     magic            b"ATFO"
    4       1     version          1
    5       1     flags            bit 0: an HMAC-SHA256 trailer follows
    6       1     group            1-255: agents of one group share one address
    7       1     priority         1-254; 0 means "the sender is giving the address up"
    8       2     interval         the sender's advert interval, in centiseconds (1-4095,
                                   VRRPv3's unit and range)
    10      1     name length      N, 1-64
    11      N     name             UTF-8, unique within the group: breaks priority ties
    11+N    1     address length   A, 1-255
    12+N    A     address          the service address the sender serves, "HOST:PORT"
    12+N+A  32    HMAC             with flag bit 0: HMAC-SHA256(key, all bytes before it)

The semantics are VRRP version 3's (RFC 5798) for one virtual router, carried
over unicast UDP between named peers instead of multicast IP protocol 112, and
with a service address (a TCP listening socket) in place of a virtual IP: see
atoll.failover.election for the state machine. A datagram that is not
exactly this (wrong magic, version, group, lengths, address or HMAC) is dropped
and counted, never answered.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

MAGIC = b"ATFO"
VERSION = 1
FLAG_HMAC = 0x01
#: A sender with this priority is stepping down: the backups take over at once.
PRIORITY_RESIGN = 0
MIN_PRIORITY = 1
MAX_PRIORITY = 254
MAX_INTERVAL_CS = 4095
MAX_NAME = 64
_HEADER = struct.Struct(">4sBBBBH")
_HMAC_SIZE = 32


class AdvertError(ValueError):
    """A datagram that is not a valid advert for this group (dropped, not answered)."""


@dataclass(frozen=True)
class Advert:
    group: int
    priority: int
    #: The sender's advert interval, in centiseconds.
    interval_cs: int
    name: str
    address: str

    @property
    def interval(self) -> float:
        return self.interval_cs / 100

    def encode(self, key: bytes | None = None) -> bytes:
        name = self.name.encode()
        address = self.address.encode()
        flags = FLAG_HMAC if key else 0
        body = b"".join(
            [
                _HEADER.pack(MAGIC, VERSION, flags, self.group, self.priority, self.interval_cs),
                bytes([len(name)]),
                name,
                bytes([len(address)]),
                address,
            ]
        )
        if key:
            body += hmac.new(key, body, hashlib.sha256).digest()
        return body


def decode(data: bytes, *, key: bytes | None = None) -> Advert:
    """Parse and check one datagram; with *key*, only a correctly signed one passes."""
    if len(data) < _HEADER.size + 2:
        raise AdvertError(f"too short ({len(data)} bytes)")
    magic, version, flags, group, priority, interval_cs = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise AdvertError("not an atoll failover advert (bad magic)")
    if version != VERSION:
        raise AdvertError(f"advert version {version}, expected {VERSION}")
    if not 1 <= interval_cs <= MAX_INTERVAL_CS:
        raise AdvertError(f"advert interval {interval_cs} cs out of range")
    if priority > MAX_PRIORITY:
        raise AdvertError(f"priority {priority} out of range")
    pos = _HEADER.size
    name, pos = _field(data, pos, "name")
    address, pos = _field(data, pos, "address")
    signed = bool(flags & FLAG_HMAC)
    if key is not None:
        if not signed or len(data) != pos + _HMAC_SIZE:
            raise AdvertError("advert is not signed, and a key is configured")
        expected = hmac.new(key, data[:pos], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, data[pos:]):
            raise AdvertError("advert HMAC does not match the configured key")
    elif signed:
        raise AdvertError("advert is signed, and no key is configured")
    elif len(data) != pos:
        raise AdvertError(f"{len(data) - pos} bytes after the advert")
    try:
        return Advert(group, priority, interval_cs, name.decode(), address.decode())
    except UnicodeDecodeError:
        raise AdvertError("name or address is not UTF-8") from None


def _field(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos >= len(data):
        raise AdvertError(f"advert ends before its {what}")
    size = data[pos]
    if size == 0 or pos + 1 + size > len(data):
        raise AdvertError(f"advert {what} length {size} does not fit")
    return data[pos + 1 : pos + 1 + size], pos + 1 + size
