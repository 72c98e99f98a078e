"""Content digests (``algorithm:hex``) and verification of streamed bytes."""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from atoll.errors import DigestMismatchError, InvalidReferenceError

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[0-9a-f]+")
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class _DigestFields(NamedTuple):
    algorithm: str
    hex: str


class Digest(_DigestFields):
    """A content digest, ``ALGORITHM:HEX``; ordered, hashable and immutable (a
    NamedTuple: a frozen dataclass costs several times as much to define, and this
    module loads at every start)."""

    __slots__ = ()

    def __new__(cls, algorithm: str, hex: str) -> Digest:
        # A digest names files on disk: never let one hold anything but hex.
        length = _HEX_LENGTH.get(algorithm)
        if length is None or len(hex) != length or not _HEX_RE.fullmatch(hex):
            raise InvalidReferenceError(f"invalid digest {algorithm}:{hex}")
        return super().__new__(cls, algorithm, hex)

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = _DIGEST_RE.match(text)
        if not match:
            raise InvalidReferenceError(f"invalid digest {text!r}: expected ALGORITHM:HEX")
        algorithm, hexpart = match.groups()
        length = _HEX_LENGTH.get(algorithm)
        if length is None:
            raise InvalidReferenceError(
                f"invalid digest {text!r}: unsupported algorithm {algorithm!r}"
            )
        if len(hexpart) != length or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise InvalidReferenceError(
                f"invalid digest {text!r}: {algorithm} needs {length} lowercase hex digits"
            )
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        return self.hex[:12]

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


class Verifier:
    """Hashes bytes as they pass and checks digest and size at the end."""

    def __init__(self, expected: Digest, size: int | None, what: str) -> None:
        self.expected = expected
        self.size = size
        self.what = what
        self._hash = expected.hasher()
        self.count = 0

    def update(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.size is not None and self.size >= 0 and self.count > self.size:
            raise DigestMismatchError(
                f"{self.what}: more data than the {self.size} bytes its descriptor declares"
            )
        self._hash.update(chunk)

    def verify(self) -> None:
        if self.size is not None and self.size >= 0 and self.count != self.size:
            raise DigestMismatchError(
                f"{self.what}: truncated: got {self.count} of {self.size} bytes"
            )
        actual = self._hash.hexdigest()
        if actual != self.expected.hex:
            raise DigestMismatchError(
                f"{self.what}: digest mismatch: expected {self.expected}, "
                f"got {self.expected.algorithm}:{actual}"
            )
