"""The standard-library bspatch against patches bsdiff4 makes, and malformed ones."""

from __future__ import annotations

import bz2
import random
import struct

import bsdiff4
import pytest

from atoll.oci.bspatch import PatchError, apply_bsdiff


def _edited(seed: int, size: int) -> tuple[bytes, bytes]:
    """A file and a rebuilt version of it: inserts, deletes and +1 to scattered bytes."""
    rng = random.Random(seed)
    old = rng.randbytes(size)
    new = bytearray(old)
    for _ in range(size // 400):
        at = rng.randrange(len(new) or 1)
        choice = rng.randrange(3)
        if choice == 0:
            new[at:at] = rng.randbytes(rng.randrange(1, 40))
        elif choice == 1:
            del new[at : at + rng.randrange(1, 40)]
        elif new:
            new[at] = (new[at] + 1) % 256
    return old, bytes(new) + b"tail"


@pytest.mark.parametrize(("seed", "size"), [(1, 0), (2, 1), (3, 700), (4, 40_000), (5, 100_000)])
def test_patches_bsdiff4_makes_apply_exactly(seed: int, size: int) -> None:
    old, new = _edited(seed, size)
    patch = bsdiff4.diff(old, new)
    assert apply_bsdiff(old, patch, len(new)) == new
    # Against nothing at all (old bytes outside the old file count as zero).
    assert apply_bsdiff(b"", bsdiff4.diff(b"", new), len(new)) == new


def _offtout(value: int) -> bytes:
    return struct.pack("<Q", -value | (1 << 63) if value < 0 else value)


def _patch(triples: list[tuple[int, int, int]], diff: bytes, extra: bytes, size: int) -> bytes:
    ctrl = bz2.compress(b"".join(_offtout(v) for t in triples for v in t))
    diff_z = bz2.compress(diff)
    head = b"BSDIFF40" + _offtout(len(ctrl)) + _offtout(len(diff_z)) + _offtout(size)
    return head + ctrl + diff_z + bz2.compress(extra)


def test_a_hand_made_patch_adds_copies_and_seeks_back() -> None:
    old = b"abcdefgh"
    # "abcd" + 1 each, then "XY" from extra, then back 4 in old and "abcd" again.
    patch = _patch([(4, 2, -4), (4, 0, 0)], b"\x01\x01\x01\x01" + bytes(4), b"XY", 10)
    assert apply_bsdiff(old, patch, 10) == b"bcdeXYabcd"


@pytest.mark.parametrize(
    ("patch", "size", "why"),
    [
        (b"BSDIFF41" + bytes(24), 0, "not a BSDIFF40"),
        (b"BSDIFF40" + bytes(10), 0, "not a BSDIFF40"),
        (_patch([(4, 0, 0)], bytes(4), b"", 4), 5, "makes 4 bytes, not 5"),
        (_patch([(4, 0, 0)], bytes(2), b"", 4), 4, "past its diff or extra"),
        (_patch([(2, 4, 0)], bytes(2), b"XY", 6), 6, "past its diff or extra"),
        (_patch([(8, 0, 0)], bytes(8), b"", 4), 4, "expands past"),
        (_patch([(2, 0, 0)], bytes(2), b"", 4), 4, "makes 2 bytes, not 4"),
        (_patch([(-1, 0, 0)], b"", b"", 4), 4, "more than the new file"),
        (b"BSDIFF40" + _offtout(9999) + _offtout(0) + _offtout(4), 4, "past its end"),
        (b"BSDIFF40" + _offtout(3) + _offtout(0) + _offtout(4) + b"abc", 4, "not bzip2"),
    ],
)
def test_malformed_patches_are_refused(patch: bytes, size: int, why: str) -> None:
    with pytest.raises(PatchError, match=why):
        apply_bsdiff(b"abcdefgh", patch, size)
