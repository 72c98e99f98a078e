"""Boot counting on the directory device: atoll plays the bootloader."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import BootEntryError
from atoll.sysroot.bootloader.entries import (
    BootEntry,
    BootState,
    choose_entry,
    mark_bad,
    mark_good,
    read_entries,
    reset_counter,
    write_entries,
)

NEW, OLD = "atoll-default-2", "atoll-default-1"


def make_entry(entry_id: str) -> BootEntry:
    return BootEntry(
        id=entry_id,
        title=entry_id,
        linux="/atoll/k/vmlinuz",
        options=f"rw atoll=/atoll/deploy/default/deploy/{entry_id}.0",
    )


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    path = tmp_path / "boot"
    path.mkdir()
    write_entries(path, [make_entry(NEW), make_entry(OLD)], counting={NEW: 3})
    return path


def files(boot: Path) -> list[str]:
    return sorted(p.name for p in (boot / "loader" / "entries").iterdir())


def test_each_boot_counts_down_until_the_bootloader_falls_back(boot: Path) -> None:
    assert files(boot) == [f"{OLD}.conf", f"{NEW}+3.conf"]
    seen = []
    for _ in range(3):
        chosen = choose_entry(boot)
        seen.append((chosen.id, chosen.tries_left, chosen.tries_done))
        assert f"{chosen.filename}" in files(boot)  # renamed before it returned
    assert seen == [(NEW, 2, 1), (NEW, 1, 2), (NEW, 0, 3)]
    assert files(boot) == [f"{OLD}.conf", f"{NEW}+0-3.conf"]

    fallback = choose_entry(boot)
    assert (fallback.id, fallback.state) == (OLD, BootState.GOOD)
    assert files(boot) == [f"{OLD}.conf", f"{NEW}+0-3.conf"]  # nothing to count
    assert [e.id for e in read_entries(boot)] == [OLD, NEW]
    assert choose_entry(boot).deployment_path == f"/atoll/deploy/default/deploy/{OLD}.0"


def test_a_good_boot_removes_the_counter(boot: Path) -> None:
    choose_entry(boot)
    blessed = mark_good(boot, NEW)
    assert (blessed.tries_left, blessed.tries_done, blessed.state) == (None, 0, BootState.GOOD)
    assert files(boot) == [f"{OLD}.conf", f"{NEW}.conf"]
    for _ in range(5):
        assert choose_entry(boot).id == NEW
    assert files(boot) == [f"{OLD}.conf", f"{NEW}.conf"]
    assert mark_good(boot, NEW) == blessed  # already good: nothing changes


def test_the_last_try_can_still_be_blessed(boot: Path) -> None:
    for _ in range(3):
        choose_entry(boot)
    mark_good(boot, NEW)
    assert choose_entry(boot).id == NEW


def test_a_bad_boot_falls_back_at_once(boot: Path) -> None:
    choose_entry(boot)
    bad = mark_bad(boot, NEW)
    assert (bad.tries_left, bad.tries_done, bad.state) == (0, 1, BootState.BAD)
    assert files(boot) == [f"{OLD}.conf", f"{NEW}+0-1.conf"]
    assert choose_entry(boot).id == OLD


def test_a_counter_can_be_reset(boot: Path) -> None:
    mark_bad(boot, NEW)
    entry = reset_counter(boot, NEW, 2)
    assert entry.filename == f"{NEW}+2.conf"
    assert files(boot) == [f"{OLD}.conf", f"{NEW}+2.conf"]
    assert choose_entry(boot).filename == f"{NEW}+1-1.conf"
    with pytest.raises(BootEntryError, match="1 or more"):
        reset_counter(boot, NEW, 0)


def test_when_every_entry_is_bad_the_first_is_booted_without_counting(boot: Path) -> None:
    mark_bad(boot, NEW)
    mark_bad(boot, OLD)
    assert files(boot) == [f"{OLD}+0.conf", f"{NEW}+0.conf"]
    chosen = choose_entry(boot)
    assert (chosen.id, chosen.tries_left, chosen.tries_done) == (NEW, 0, 0)
    assert files(boot) == [f"{OLD}+0.conf", f"{NEW}+0.conf"]


def test_an_unknown_entry_is_named_with_the_known_ones(boot: Path) -> None:
    with pytest.raises(BootEntryError, match="no boot entry nope") as info:
        mark_good(boot, "nope")
    assert str(info.value).endswith(f"(entries: {OLD}, {NEW})")


def test_nothing_to_boot_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BootEntryError, match="no boot entries"):
        choose_entry(tmp_path)
