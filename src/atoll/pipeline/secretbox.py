"""NaCl ``secretbox`` (XSalsa20-Poly1305), enough to read and write cosign keys.

cosign and containers/image keep private keys encrypted with
go-securesystemslib's ``encrypted`` package: scrypt derives a 32-byte key, and
NaCl's secretbox seals the PKCS#8 bytes.  ``cryptography`` has scrypt and
Poly1305 but not XSalsa20, so the stream cipher is written out here.  Keys are
a few hundred bytes, so pure Python is fast enough.

Sealed layout (as Go's ``secretbox.Seal`` writes it)::

    +----------------+--------------------------------+
    | Poly1305 tag   | plaintext XOR XSalsa20 stream  |
    | 16 bytes       | (stream bytes 32.. ; 0..31 are |
    |                |  the one-time Poly1305 key)    |
    +----------------+--------------------------------+
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives.poly1305 import Poly1305

KEY_SIZE = 32
NONCE_SIZE = 24
TAG_SIZE = 16
_MASK = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)


class SecretBoxError(ValueError):
    """The box was not sealed with this key (or was altered)."""


def _rotl(value: int, shift: int) -> int:
    value &= _MASK
    return ((value << shift) & _MASK) | (value >> (32 - shift))


def _quarter(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[b] ^= _rotl(x[a] + x[d], 7)
    x[c] ^= _rotl(x[b] + x[a], 9)
    x[d] ^= _rotl(x[c] + x[b], 13)
    x[a] ^= _rotl(x[d] + x[c], 18)


def _rounds(state: list[int]) -> list[int]:
    x = list(state)
    for _ in range(10):
        _quarter(x, 0, 4, 8, 12)
        _quarter(x, 5, 9, 13, 1)
        _quarter(x, 10, 14, 2, 6)
        _quarter(x, 15, 3, 7, 11)
        _quarter(x, 0, 1, 2, 3)
        _quarter(x, 5, 6, 7, 4)
        _quarter(x, 10, 11, 8, 9)
        _quarter(x, 15, 12, 13, 14)
    return x


def _state(key: bytes, middle: bytes) -> list[int]:
    k = struct.unpack("<8I", key)
    m = struct.unpack("<4I", middle)
    return [
        _SIGMA[0], *k[:4], _SIGMA[1], *m, _SIGMA[2], *k[4:], _SIGMA[3],
    ]  # fmt: skip


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    x = _rounds(_state(key, nonce16))
    return struct.pack("<8I", *(x[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))


def _salsa20_stream(key: bytes, nonce8: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        state = _state(key, nonce8 + struct.pack("<Q", counter))
        mixed = _rounds(state)
        out += struct.pack("<16I", *((a + b) & _MASK for a, b in zip(mixed, state, strict=True)))
        counter += 1
    return bytes(out[:length])


def _stream(key: bytes, nonce: bytes, length: int) -> bytes:
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("secretbox needs a 32-byte key and a 24-byte nonce")
    return _salsa20_stream(_hsalsa20(key, nonce[:16]), nonce[16:], length)


def seal(message: bytes, nonce: bytes, key: bytes) -> bytes:
    stream = _stream(key, nonce, 32 + len(message))
    ciphertext = bytes(m ^ s for m, s in zip(message, stream[32:], strict=True))
    return Poly1305.generate_tag(stream[:32], ciphertext) + ciphertext


def open_box(box: bytes, nonce: bytes, key: bytes) -> bytes:
    if len(box) < TAG_SIZE:
        raise SecretBoxError("sealed box is too short")
    tag, ciphertext = box[:TAG_SIZE], box[TAG_SIZE:]
    stream = _stream(key, nonce, 32 + len(ciphertext))
    if not hmac.compare_digest(Poly1305.generate_tag(stream[:32], ciphertext), tag):
        raise SecretBoxError("authentication failed")
    return bytes(c ^ s for c, s in zip(ciphertext, stream[32:], strict=True))
