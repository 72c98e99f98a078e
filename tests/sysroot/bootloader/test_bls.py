"""BLS type #1 entries: the file format and the boot order (no file system state)."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest

from atoll.errors import BootEntryError
from atoll.sysroot.bootloader.bls import (
    BootEntry,
    BootState,
    bootloader_order,
    compare_versions,
    format_entry,
    load_entry,
    parse_entry,
    parse_filename,
)
from helpers.bootentries import KDIR, make_entry

# --- the format ------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        make_entry(1),
        make_entry(2, tries_left=3),
        make_entry(3, tries_left=1, tries_done=2),
        make_entry(4, tries_left=0, tries_done=3, architecture="x64"),
        make_entry(5, title="", initrd=(), options="", version="7", sort_key="atoll"),
        make_entry(
            6,
            initrd=("/a/ucode.img", "/a/initrd.img"),
            extra=(("machine-id", "4098b3f648d74c13b1f04ccfba7798e8"), ("devicetree", "/a/x.dtb")),
        ),
    ],
    ids=lambda e: e.filename,
)
def test_an_entry_survives_serialization(entry: BootEntry) -> None:
    assert parse_entry(format_entry(entry), entry.filename) == entry


def test_serialization_is_bls_key_value_lines() -> None:
    entry = make_entry(2, version="2", sort_key="atoll", tries_left=3)
    assert entry.filename == "atoll-default-2+3.conf"
    assert format_entry(entry) == (
        "title Atoll 42.2 (default)\n"
        "version 2\n"
        "sort-key atoll\n"
        f"linux {KDIR}/vmlinuz-6.1.0\n"
        f"initrd {KDIR}/initramfs-6.1.0.img\n"
        "options root=LABEL=root rw atoll=/atoll/deploy/default/deploy/c2.0\n"
    )


def test_parsing_tolerates_what_the_bls_allows_and_keeps_unknown_keys() -> None:
    text = (
        "# written by hand\n"
        "\n"
        "title\tAtoll  42\r\n"
        "   linux   /k/vmlinuz  \n"
        "options root=/dev/vda2\n"
        "machine-id 4098b3f648d74c13b1f04ccfba7798e8\n"
        "  # indented comment\n"
        "initrd /k/ucode.img\n"
        "initrd /k/initrd.img\n"
        "options quiet atoll=/atoll/deploy/os/deploy/abc.1\n"
        "x-atoll-note\n"
    )
    entry = parse_entry(text, "/boot/loader/entries/os-1+2-1.conf")
    assert entry.id == "os-1"
    assert (entry.tries_left, entry.tries_done, entry.state) == (2, 1, BootState.INDETERMINATE)
    assert entry.title == "Atoll  42"
    assert entry.linux == "/k/vmlinuz"
    assert entry.initrd == ("/k/ucode.img", "/k/initrd.img")
    assert entry.options == "root=/dev/vda2 quiet atoll=/atoll/deploy/os/deploy/abc.1"
    assert entry.deployment_path == "/atoll/deploy/os/deploy/abc.1"
    assert entry.extra == (
        ("machine-id", "4098b3f648d74c13b1f04ccfba7798e8"),
        ("x-atoll-note", ""),
    )
    again = format_entry(entry)
    assert "machine-id 4098b3f648d74c13b1f04ccfba7798e8\n" in again
    assert parse_entry(again, "os-1+2-1.conf") == entry


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("a.conf", ("a", None, 0)),
        ("atoll-default-2+3.conf", ("atoll-default-2", 3, 0)),
        ("atoll-default-2+0-3.conf", ("atoll-default-2", 0, 3)),
        ("6.1.0-18+1-12.conf", ("6.1.0-18", 1, 12)),
    ],
)
def test_file_names_carry_the_counter(name: str, parsed: tuple[str, int | None, int]) -> None:
    assert parse_filename(name) == parsed


def test_the_deployment_path_is_read_from_the_kernel_arguments() -> None:
    assert make_entry(1).deployment_path == "/atoll/deploy/default/deploy/c1.0"
    assert make_entry(1, options="quiet").deployment_path is None
    assert make_entry(1, options="atoll=/a atoll=/b").deployment_path == "/b"
    assert make_entry(1, options="atoll=/a -- atoll=/init-arg").deployment_path == "/a"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("e.conf", "title x\noptions y\n", "e.conf: no 'linux' line"),
        ("e.conf", "title x\n\nlinux\n", "e.conf:3: 'linux' needs a path"),
        ("e.conf", "linux /k\ninitrd  \n", "e.conf:2: 'initrd' needs a path"),
        ("e.conf", "linux /k\ntitle a\x00b\n", "e.conf:2: a NUL"),
        ("e+x.conf", "linux /k\n", "e+x.conf: not a boot entry file name"),
        ("e+1-.conf", "linux /k\n", "e+1-.conf: not a boot entry file name"),
        ("e.txt", "linux /k\n", "e.txt: not a boot entry file name"),
    ],
)
def test_malformed_entries_are_rejected_naming_the_file(name: str, text: str, message: str) -> None:
    with pytest.raises(BootEntryError) as info:
        parse_entry(text, f"/boot/loader/entries/{name}")
    assert f"/boot/loader/entries/{message}" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 44


def test_a_file_that_is_not_utf8_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "e.conf"
    path.write_bytes(b"linux /k\ntitle caf\xe9\n")
    with pytest.raises(BootEntryError, match=rf"^{path}:2: not UTF-8$"):
        load_entry(path)


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "a+b"},
        {"id": "a/b"},
        {"id": ""},
        {"linux": ""},
        {"title": "two\nlines"},
        {"options": " leading"},
        {"tries_done": 1},
        {"tries_left": -1},
        {"extra": (("linux", "/other"),)},
        {"extra": (("#x", "y"),)},
    ],
)
def test_entries_that_could_not_be_written_faithfully_are_refused(
    fields: dict[str, object],
) -> None:
    with pytest.raises(BootEntryError):
        make_entry(1, **fields)


# --- the order -------------------------------------------------------------------

# The chain from systemd's strverscmp_improved() and the UAPI version format spec.
VERSION_CHAIN = [
    "122.1",
    "123~rc1-1",
    "123",
    "123-a",
    "123-a.1",
    "123-1",
    "123-1.1",
    "123^post1",
    "123.a-1",
    "123.1-1",
    "123a-1",
    "124-1",
]


def test_versions_compare_as_the_uapi_version_format_says() -> None:
    shuffled = VERSION_CHAIN[::2] + VERSION_CHAIN[1::2]
    assert sorted(shuffled, key=functools.cmp_to_key(compare_versions)) == VERSION_CHAIN
    for older, newer in itertools.pairwise(VERSION_CHAIN):
        assert compare_versions(older, newer) < 0 < compare_versions(newer, older)
    assert compare_versions("9", "10") < 0
    assert compare_versions("007", "7") == 0
    assert compare_versions("1_2", "12") < 0  # '_' separates: "1" then "2"
    assert compare_versions("", "") == 0
    assert compare_versions("", "0") < 0


def test_bootloader_order_follows_the_bls_sorting_rules() -> None:
    mid = (("machine-id", "4098b3f648d74c13b1f04ccfba7798e8"),)
    entries = {
        "bad": make_entry(1, sort_key="atoll", version="99", tries_left=0, tries_done=3),
        "aaa": make_entry(2, sort_key="aaa", version="1"),
        "v10": make_entry(3, sort_key="atoll", version="10"),
        "v9": make_entry(4, sort_key="atoll", version="9", tries_left=2, tries_done=1),
        "v9-mid": make_entry(5, sort_key="atoll", version="9", extra=mid),
        "nokey-zz": make_entry(6, id="zz-1"),
        "nokey-aa": make_entry(7, id="aa-1"),
        "nokey-aa10": make_entry(8, id="aa-10"),
    }
    expected = ["aaa", "v10", "v9", "v9-mid", "nokey-zz", "nokey-aa10", "nokey-aa", "bad"]
    names = {e.id: name for name, e in entries.items()}
    got = [names[e.id] for e in bootloader_order(reversed(entries.values()))]
    assert got == expected


def test_otherwise_equal_counted_entries_sort_by_tries() -> None:
    a = make_entry(1, tries_left=1, tries_done=1)
    b = make_entry(1, tries_left=2, tries_done=5)
    c = make_entry(1, tries_left=2, tries_done=0)
    assert bootloader_order([a, b, c]) == [c, b, a]
