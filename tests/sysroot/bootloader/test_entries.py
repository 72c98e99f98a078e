"""Boot entries on disk: the double-buffered loader symlink, the lock, kernels, bootctl."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.errors import BootEntryError, LocalIOError, LockedError, NoSpaceError
from atoll.faults import CRASH_ENV
from atoll.sysroot.bootloader import entries as bootloader
from atoll.sysroot.bootloader.entries import (
    BootEntry,
    BootState,
    choose_entry,
    install_kernel,
    kernel_digest,
    lock_boot,
    mark_bad,
    prune_kernels,
    read_entries,
    write_entries,
)
from helpers.bootentries import make_entry
from helpers.parts import missing, require_tool


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    path = tmp_path / "sysroot" / "boot"
    path.mkdir(parents=True)
    return path


def boot_listing(boot: Path) -> list[str]:
    return sorted(p.name for p in boot.iterdir())


# --- boot order through the files --------------------------------------------


def test_written_entries_read_back_in_the_order_given(boot: Path) -> None:
    given = [make_entry(n) for n in range(11, 0, -1)]  # 11 entries: versions 11 .. 1
    written = write_entries(boot, given)
    assert [e.version for e in written] == [str(n) for n in range(11, 0, -1)]
    assert {e.sort_key for e in written} == {"atoll"}
    assert read_entries(boot) == written
    shuffled = [*given[5:], *given[:5]]
    assert [e.id for e in read_entries(boot)] != [e.id for e in shuffled]
    write_entries(boot, shuffled)
    assert [e.id for e in read_entries(boot)] == [e.id for e in shuffled]


def test_a_bad_entry_sorts_last_and_the_rest_keep_their_order(boot: Path) -> None:
    write_entries(boot, [make_entry(3), make_entry(2), make_entry(1)])
    mark_bad(boot, "atoll-default-3")
    got = [(e.id, e.state) for e in read_entries(boot)]
    assert got == [
        ("atoll-default-2", BootState.GOOD),
        ("atoll-default-1", BootState.GOOD),
        ("atoll-default-3", BootState.BAD),
    ]


# --- the loader symlink ----------------------------------------------------------


def test_the_first_write_makes_the_loader_symlink(boot: Path) -> None:
    write_entries(boot, [make_entry(2), make_entry(1)], counting={"atoll-default-2": 3})
    assert str((boot / "loader").readlink()) == "loader.0"
    assert boot_listing(boot) == [".atoll-lock", "loader", "loader.0"]
    assert (boot / "loader" / "entries.srel").read_text() == "type1\n"
    assert sorted(p.name for p in (boot / "loader" / "entries").iterdir()) == [
        "atoll-default-1.conf",
        "atoll-default-2+3.conf",
    ]


def test_each_write_swaps_directories_and_carries_loader_conf_over(boot: Path) -> None:
    write_entries(boot, [make_entry(1)])
    (boot / "loader" / "loader.conf").write_text("timeout 3\n")
    write_entries(boot, [make_entry(2), make_entry(1)])
    assert str((boot / "loader").readlink()) == "loader.1"
    assert boot_listing(boot) == [".atoll-lock", "loader", "loader.1"]
    assert (boot / "loader" / "loader.conf").read_text() == "timeout 3\n"
    write_entries(boot, [make_entry(3)])
    assert str((boot / "loader").readlink()) == "loader.0"
    assert boot_listing(boot) == [".atoll-lock", "loader", "loader.0"]
    assert [e.id for e in read_entries(boot)] == ["atoll-default-3"]


def test_counters_survive_a_rewrite_of_entries_read_back(boot: Path) -> None:
    write_entries(boot, [make_entry(2), make_entry(1)], counting={"atoll-default-2": 3})
    choose_entry(boot)
    write_entries(boot, [make_entry(3), *read_entries(boot)], counting={"atoll-default-3": 2})
    assert [e.filename for e in read_entries(boot)] == [
        "atoll-default-3+2.conf",
        "atoll-default-2+2-1.conf",
        "atoll-default-1.conf",
    ]


@pytest.mark.parametrize(
    ("entries", "counting", "message"),
    [
        ([], {}, "empty set"),
        ([make_entry(1), make_entry(1)], {}, "given twice"),
        ([make_entry(1), make_entry(1, id="ATOLL-default-1")], {}, "given twice"),
        ([make_entry(1)], {"atoll-default-9": 3}, "names no entry"),
        ([make_entry(1)], {"atoll-default-1": 0}, "1 or more"),
    ],
)
def test_a_bad_request_changes_nothing(
    boot: Path, entries: list[BootEntry], counting: dict[str, int], message: str
) -> None:
    write_entries(boot, [make_entry(7)])
    before = boot_listing(boot)
    with pytest.raises(BootEntryError, match=message):
        write_entries(boot, entries, counting=counting)
    assert boot_listing(boot) == before
    assert [e.id for e in read_entries(boot)] == ["atoll-default-7"]


def test_a_full_disk_during_a_write_leaves_the_old_set_and_no_debris(
    boot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_entries(boot, [make_entry(1)])
    before = boot_listing(boot)
    real = bootloader._create_file
    calls = 0

    def create_file(path: Path, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(bootloader, "_create_file", create_file)
    with pytest.raises(NoSpaceError):
        write_entries(boot, [make_entry(3), make_entry(2)])
    assert boot_listing(boot) == before
    assert [e.id for e in read_entries(boot)] == ["atoll-default-1"]


def test_no_entries_before_the_first_write(boot: Path) -> None:
    assert read_entries(boot) == []


def test_a_loader_directory_not_made_by_atoll_is_not_overwritten(boot: Path) -> None:
    (boot / "loader" / "entries").mkdir(parents=True)
    with pytest.raises(BootEntryError, match="a directory, not the symlink"):
        write_entries(boot, [make_entry(1)])
    assert (boot / "loader" / "entries").is_dir()


def test_a_malformed_file_in_the_current_set_is_named(boot: Path) -> None:
    write_entries(boot, [make_entry(1)])
    bad = boot / "loader.0" / "entries" / "stray.conf"
    bad.write_text("title no kernel\n")
    with pytest.raises(BootEntryError, match=f"^{bad}: no 'linux' line"):
        read_entries(boot)


CHILD = """
import sys
from pathlib import Path
from atoll.sysroot.bootloader.entries import BootEntry, write_entries

entries = [
    BootEntry(id=f"atoll-default-{n}", title=f"Atoll {n}", linux="/atoll/k/vmlinuz")
    for n in sys.argv[2:]
]
write_entries(Path(sys.argv[1]), entries)
"""


def write_in_child(boot: Path, ids: list[int], crash_at: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    argv = [sys.executable, "-c", CHILD, str(boot), *map(str, ids)]
    return subprocess.run(argv, env=env, timeout=60, check=False).returncode


@pytest.mark.parametrize(
    ("crash_at", "survivor"),
    [
        ("boot-entries-written", "old"),
        ("boot-symlink-made", "old"),
        ("boot-swapped", "new"),
    ],
)
def test_a_crash_during_a_write_leaves_the_old_set_or_the_new(
    boot: Path, crash_at: str, survivor: str
) -> None:
    assert write_in_child(boot, [2, 1]) == 0
    old = [e.id for e in read_entries(boot)]
    assert write_in_child(boot, [3, 2], crash_at) == -signal.SIGKILL
    after = [e.id for e in read_entries(boot)]
    assert after == (old if survivor == "old" else ["atoll-default-3", "atoll-default-2"])
    assert len(boot_listing(boot)) > 3  # something was left behind to clean

    assert write_in_child(boot, [4, 3]) == 0
    assert [e.id for e in read_entries(boot)] == ["atoll-default-4", "atoll-default-3"]
    current = str((boot / "loader").readlink())
    assert boot_listing(boot) == [".atoll-lock", "loader", current]


def test_a_crash_during_the_first_write_leaves_no_entries(boot: Path) -> None:
    assert write_in_child(boot, [1], "boot-entries-written") == -signal.SIGKILL
    assert read_entries(boot) == []
    assert write_in_child(boot, [1]) == 0
    assert [e.id for e in read_entries(boot)] == ["atoll-default-1"]
    assert boot_listing(boot) == [".atoll-lock", "loader", "loader.0"]


def test_the_lock_excludes_other_holders_and_is_reentrant(boot: Path) -> None:
    outcome: list[str] = []

    def other() -> None:
        try:
            with lock_boot(boot, wait=False):
                outcome.append("got it")
        except LockedError as exc:
            outcome.append(str(exc))

    with lock_boot(boot), lock_boot(boot):
        write_entries(boot, [make_entry(1)])  # takes the lock again: no deadlock
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert outcome == [f"{boot}: another atoll process is changing the boot entries"]
    other()
    assert outcome[-1] == "got it"


# --- kernels ---------------------------------------------------------------------


@pytest.fixture
def kernel(tmp_path: Path) -> tuple[Path, Path]:
    vmlinuz = tmp_path / "vmlinuz"
    initramfs = tmp_path / "initramfs"
    vmlinuz.write_bytes(b"MZ kernel " * 1000)
    initramfs.write_bytes(b"070701 cpio " * 1000)
    return vmlinuz, initramfs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_kernel_is_installed_content_addressed(boot: Path, kernel: tuple[Path, Path]) -> None:
    vmlinuz, initramfs = kernel
    linux, initrd = install_kernel(boot, "6.1.0-18-amd64", vmlinuz, initramfs)
    digest = kernel_digest("6.1.0-18-amd64", sha256(vmlinuz), sha256(initramfs))
    assert linux == f"/atoll/{digest}/vmlinuz-6.1.0-18-amd64"
    assert initrd == f"/atoll/{digest}/initramfs-6.1.0-18-amd64.img"
    assert (boot / linux.lstrip("/")).read_bytes() == vmlinuz.read_bytes()
    assert (boot / str(initrd).lstrip("/")).read_bytes() == initramfs.read_bytes()
    assert sorted(p.name for p in (boot / "atoll").iterdir()) == [digest]


def test_installing_the_same_kernel_again_changes_nothing(
    boot: Path, kernel: tuple[Path, Path]
) -> None:
    vmlinuz, initramfs = kernel
    first = install_kernel(boot, "6.1", vmlinuz, initramfs)
    stat = (boot / first[0].lstrip("/")).stat()
    assert install_kernel(boot, "6.1", vmlinuz, initramfs) == first
    again = (boot / first[0].lstrip("/")).stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert len(list((boot / "atoll").iterdir())) == 1


def test_each_kernel_gets_its_own_directory(boot: Path, kernel: tuple[Path, Path]) -> None:
    vmlinuz, initramfs = kernel
    base = install_kernel(boot, "6.1", vmlinuz, initramfs)
    other_version = install_kernel(boot, "6.2", vmlinuz, initramfs)
    no_initramfs = install_kernel(boot, "6.1", vmlinuz, None)
    initramfs.write_bytes(b"another initramfs")
    other_initramfs = install_kernel(boot, "6.1", vmlinuz, initramfs)
    dirs = {p[0].split("/")[2] for p in (base, other_version, no_initramfs, other_initramfs)}
    assert len(dirs) == 4
    assert no_initramfs[1] is None
    assert [p.name for p in (boot / no_initramfs[0].lstrip("/")).parent.iterdir()] == [
        "vmlinuz-6.1"
    ]


def test_a_bad_kernel_version_or_a_missing_file_is_refused(
    boot: Path, kernel: tuple[Path, Path]
) -> None:
    vmlinuz, _ = kernel
    with pytest.raises(BootEntryError, match="kernel version"):
        install_kernel(boot, "../6.1", vmlinuz, None)
    with pytest.raises(LocalIOError, match="no-such-file: No such file"):
        install_kernel(boot, "6.1", vmlinuz.with_name("no-such-file"), None)
    assert not (boot / "atoll").exists()


KERNEL_CHILD = """
import sys
from pathlib import Path
from atoll.sysroot.bootloader.entries import install_kernel

install_kernel(Path(sys.argv[1]), "6.1", Path(sys.argv[2]), Path(sys.argv[3]))
"""


def test_a_crash_while_copying_a_kernel_leaves_nothing_in_place(
    boot: Path, kernel: tuple[Path, Path]
) -> None:
    vmlinuz, initramfs = kernel
    env = {**os.environ, CRASH_ENV: "boot-kernel-copied"}
    argv = [sys.executable, "-c", KERNEL_CHILD, str(boot), str(vmlinuz), str(initramfs)]
    assert subprocess.run(argv, env=env, timeout=60, check=False).returncode == -signal.SIGKILL
    [leftover] = (boot / "atoll").iterdir()
    assert leftover.name.startswith(".atoll-tmp-")
    linux, _ = install_kernel(boot, "6.1", vmlinuz, initramfs)
    assert [p.name for p in (boot / "atoll").iterdir()] == [linux.split("/")[2]]


def test_pruning_removes_the_kernels_no_entry_uses(boot: Path, kernel: tuple[Path, Path]) -> None:
    vmlinuz, initramfs = kernel
    used = install_kernel(boot, "6.1", vmlinuz, initramfs)
    kept = install_kernel(boot, "6.2", vmlinuz, initramfs)
    unused = install_kernel(boot, "6.3", vmlinuz, None)
    (boot / "atoll" / "not-a-kernel-dir").mkdir()
    write_entries(boot, [make_entry(1, linux=used[0], initrd=(str(used[1]),))])
    removed = prune_kernels(boot, keep_paths=[kept[0]])
    assert removed == [unused[0].split("/")[2]]
    assert sorted(p.name for p in (boot / "atoll").iterdir()) == sorted(
        [used[0].split("/")[2], kept[0].split("/")[2], "not-a-kernel-dir"]
    )
    assert prune_kernels(boot) == [kept[0].split("/")[2]]


# --- systemd's bootctl as an oracle ----------------------------------------------


def bootctl_list(boot: Path) -> Iterator[dict[str, object]]:
    """bootctl's view of *boot*: it wants the root of a file system, so bind-mount
    the directory onto itself in a mount namespace of its own."""
    bootctl = require_tool("bootctl", "systemd-boot")
    unshare = require_tool("unshare", "util-linux")
    if os.geteuid() != 0:
        missing("bootctl needs a mount namespace: run as root")
    script = (
        'mount --bind "$1" "$1" && exec "$2" --esp-path="$1" --boot-path="$1" --json=short list'
    )
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", boot, bootctl],
        env={**os.environ, "SYSTEMD_RELAX_ESP_CHECKS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 and ("mount" in proc.stderr or "unshare" in proc.stderr):
        missing(f"cannot bind-mount for bootctl: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    decoder = json.JSONDecoder()
    text = proc.stdout.strip()
    while text:  # systemd 252 prints one object per entry; newer ones an array
        value, end = decoder.raw_decode(text)
        yield from value if isinstance(value, list) else [value]
        text = text[end:].lstrip()


@pytest.mark.integration
def test_bootctl_reads_and_orders_the_entries_as_atoll_does(
    boot: Path, kernel: tuple[Path, Path]
) -> None:
    vmlinuz, initramfs = kernel
    linux, initrd = install_kernel(boot, "6.1", vmlinuz, initramfs)
    assert initrd is not None
    common = {"linux": linux, "initrd": (initrd,)}
    given = [make_entry(n, **common) for n in range(12, 0, -1)]
    write_entries(boot, given, counting={"atoll-default-12": 3, "atoll-default-11": 2})
    choose_entry(boot)
    mark_bad(boot, "atoll-default-12")
    choose_entry(boot)  # atoll-default-11: +1-1
    # Entries written by others, to put the version comparison to the test.
    entries_dir = boot / "loader" / "entries"
    hand_written = {
        "other-5.10.conf": ("other", "5.10.0-1"),
        "other-5.9.conf": ("other", "5.9.12"),
        "other-rc.conf": ("other", "5.10~rc1"),
        "other-patched.conf": ("other", "5.10.0^p1"),
        "other-alpha.conf": ("other", "5.10a"),
        "nokey-2.conf": (None, "1"),
        "nokey-10.conf": (None, "1"),
    }
    for name, (sort_key, version) in hand_written.items():
        key_line = f"sort-key {sort_key}\n" if sort_key else ""
        (entries_dir / name).write_text(
            f"title {name}\n{key_line}version {version}\nlinux {linux}\n"
        )

    ours = read_entries(boot)
    theirs = list(bootctl_list(boot))
    assert [str(e["id"]) for e in theirs] == [f"{e.id}.conf" for e in ours]
    assert [(e.get("triesLeft"), e.get("triesDone")) for e in theirs] == [
        (e.tries_left, e.tries_done if e.tries_left is not None else None) for e in ours
    ]
    for mine, its in zip(ours, theirs, strict=True):
        assert its.get("title") == mine.title
        assert its.get("version") == mine.version
        assert its.get("sortKey", "") == mine.sort_key
        assert its.get("linux") == mine.linux
        assert tuple(its.get("initrd", ())) == mine.initrd  # type: ignore[arg-type]
        assert its.get("options", "") == mine.options
    assert ours[0].id == "atoll-default-11"
    assert ours[-1].id == "atoll-default-12"
