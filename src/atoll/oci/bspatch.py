"""Applying bsdiff patches (``BSDIFF40``) with the standard library alone.

A device has no bsdiff package (Debian ships none for Python), so the patch
format is read here; patches are made where images are built (``bsdiff4``).
The layout, all integers 8 bytes in bsdiff's sign-and-magnitude encoding
(little endian, the top bit of the last byte is the sign)::

    offset 0   "BSDIFF40"
           8   length of the control block (bzip2)
          16   length of the diff block (bzip2)
          24   size of the new file
          32   control block: triples (add, copy, seek)
               diff block:    bytes added (mod 256) to the old file's bytes
               extra block:   bytes copied as they are (the rest of the patch)

Applying: starting at position 0 in both files, for each triple take *add*
bytes of the old file plus the diff block (old bytes outside the old file
count as 0), then *copy* bytes of the extra block, then move the old position
by *seek*.  Every count is checked against the blocks and the new size, so a
malformed patch is refused instead of read past its end.
"""

from __future__ import annotations

import bz2

MAGIC = b"BSDIFF40"
HEADER = 32
_SIGN = 1 << 63


class PatchError(ValueError):
    """The bytes are not a bsdiff patch, or not one that applies to the old file."""


def _offtin(raw: bytes) -> int:
    value = int.from_bytes(raw, "little")
    return -(value & ~_SIGN) if value & _SIGN else value


def _unbz2(data: bytes, limit: int, what: str) -> bytes:
    try:
        out = bz2.BZ2Decompressor().decompress(data, max_length=limit + 1)
    except (OSError, EOFError, ValueError) as exc:
        raise PatchError(f"the {what} block is not bzip2 data: {exc}") from None
    if len(out) > limit:
        raise PatchError(f"the {what} block expands past what the patch can use")
    return out


def _add(old: bytes, diff: bytes) -> bytes:
    """Bytewise (old + diff) mod 256, eight bits a lane of one big integer."""
    n = len(diff)
    low, high = int.from_bytes(b"\x7f" * n, "little"), int.from_bytes(b"\x80" * n, "little")
    a, b = int.from_bytes(old, "little"), int.from_bytes(diff, "little")
    return (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(n, "little")


def apply_bsdiff(old: bytes, patch: bytes, size: int) -> bytes:
    """The new file *patch* makes from *old*; it must be *size* bytes."""
    if len(patch) < HEADER or patch[:8] != MAGIC:
        raise PatchError("not a BSDIFF40 patch")
    ctrl_len, diff_len, new_size = (_offtin(patch[i : i + 8]) for i in (8, 16, 24))
    if ctrl_len < 0 or diff_len < 0 or HEADER + ctrl_len + diff_len > len(patch):
        raise PatchError("its block lengths point past its end")
    if new_size != size:
        raise PatchError(f"it makes {new_size} bytes, not {size}")
    ctrl_end = HEADER + ctrl_len
    # Each triple covers at least one byte of the new file (or none: bounded by the count).
    ctrl = _unbz2(patch[HEADER:ctrl_end], 24 * (size + 1), "control")
    diff = _unbz2(patch[ctrl_end : ctrl_end + diff_len], size, "diff")
    extra = _unbz2(patch[ctrl_end + diff_len :], size, "extra")
    if len(ctrl) % 24:
        raise PatchError("its control block is cut short")
    out = bytearray()
    old_pos = diff_pos = extra_pos = 0
    for at in range(0, len(ctrl), 24):
        add, copy, seek = (_offtin(ctrl[at + i : at + i + 8]) for i in (0, 8, 16))
        if add < 0 or copy < 0 or len(out) + add + copy > size:
            raise PatchError("its control block makes more than the new file")
        if diff_pos + add > len(diff) or extra_pos + copy > len(extra):
            raise PatchError("its control block reads past its diff or extra block")
        if add:
            lo, hi = max(old_pos, 0), min(old_pos + add, len(old))
            if lo < hi:
                base = bytes(lo - old_pos) + old[lo:hi] + bytes(old_pos + add - hi)
            else:
                base = bytes(add)
            out += _add(base, diff[diff_pos : diff_pos + add])
        diff_pos += add
        out += extra[extra_pos : extra_pos + copy]
        extra_pos += copy
        old_pos += add + seek
    if len(out) != size:
        raise PatchError(f"it makes {len(out)} bytes, not {size}")
    return bytes(out)
