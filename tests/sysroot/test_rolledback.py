"""The list of rolled-back OS images (atoll.sysroot.rolledback): round trip,
order and limit, forgetting, and files it must not trust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError, NotFoundError, SysrootVersionError
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.rolledback import (
    LIMIT,
    NO_CHECKS_REASON,
    RolledBackImage,
    find_rolled_back,
    forget_if_rolled_back,
    forget_rolled_back,
    read_rolled_back,
    record_rolled_back,
)
from helpers.updates import deployment

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


@pytest.fixture
def sysroot(tmp_path: Path) -> Sysroot:
    root = Sysroot(tmp_path)
    root.meta.mkdir()
    return root


def test_record_find_and_round_trip(sysroot: Sysroot) -> None:
    assert read_rolled_back(sysroot) == []
    entry = record_rolled_back(sysroot, deployment(A, "2.0"), "2026-06-01T03:00:00Z", 3, "why")
    assert entry == RolledBackImage.from_json(entry.to_json())
    assert find_rolled_back(sysroot, A) == entry
    assert find_rolled_back(sysroot, B) is None
    assert entry.version == "2.0" and entry.attempts_used == 3
    assert "2.0" in entry.describe() and A[:19] in entry.describe()
    second = record_rolled_back(sysroot, deployment(B, "3.0"), "t2", 1, None)
    assert second.reason == NO_CHECKS_REASON
    again = record_rolled_back(sysroot, deployment(A, "2.0"), "t3", 3, "again")
    assert read_rolled_back(sysroot) == [second, again]  # newest last, once each


def test_the_list_keeps_the_newest(sysroot: Sysroot) -> None:
    for n in range(LIMIT + 5):
        record_rolled_back(sysroot, deployment(f"sha256:{n:064x}", "x"), "t", 3, "why")
    kept = read_rolled_back(sysroot)
    assert len(kept) == LIMIT
    assert kept[-1].image_digest == f"sha256:{LIMIT + 4:064x}"


def test_forget_by_digest_or_prefix(sysroot: Sysroot) -> None:
    record_rolled_back(sysroot, deployment(A, "2.0"), "t", 3, "why")
    record_rolled_back(sysroot, deployment(B, "3.0"), "t", 3, "why")
    with pytest.raises(NotFoundError, match="no single rolled-back image"):
        forget_rolled_back(sysroot, "sha256:c")
    assert forget_rolled_back(sysroot, "aaaaaaaa").image_digest == A
    assert [e.image_digest for e in read_rolled_back(sysroot)] == [B]
    forget_if_rolled_back(sysroot, A)  # not there: nothing changes
    forget_if_rolled_back(sysroot, B)
    assert read_rolled_back(sysroot) == []


def test_a_bad_or_newer_file_is_refused(sysroot: Sysroot) -> None:
    path = sysroot.meta / "rolled-back.json"
    path.write_text("{")
    with pytest.raises(InvalidInputError, match="not JSON"):
        read_rolled_back(sysroot)
    path.write_text(json.dumps({"formatVersion": 1, "images": [{"imageDigest": A}]}))
    with pytest.raises(InvalidInputError, match="not a valid list"):
        find_rolled_back(sysroot, A)
    path.write_text(json.dumps({"formatVersion": 2, "images": []}))
    with pytest.raises(SysrootVersionError, match="newer atoll"):
        read_rolled_back(sysroot)
