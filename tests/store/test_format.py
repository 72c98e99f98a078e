"""The store's canonical encodings: file headers, trees, commits, ref names."""

from __future__ import annotations

import pytest

from atoll.errors import InvalidInputError
from atoll.store.format import (
    DirMeta,
    FileType,
    check_ref_name,
    decode_commit,
    decode_tree,
    encode_commit,
    encode_tree,
    file_header,
    file_id,
)

ID = "a" * 64


def test_the_file_header_is_what_the_format_says() -> None:
    header = file_header(FileType.REGULAR, 0o104755, 1, 2, 3, 0, b"", ())
    assert header == (
        b"ATOLLF\x00\x01"
        + b"\x01"
        + (0o4755).to_bytes(4, "big")
        + (1).to_bytes(4, "big")
        + (2).to_bytes(4, "big")
        + (3).to_bytes(8, "big")
        + (0).to_bytes(8, "big")
        + (0).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
    )
    link = file_header(
        FileType.SYMLINK, 0o777, 0, 0, 0, 0, b"target", (("user.b", b"2"), ("user.a", b"1"))
    )
    assert link.endswith(
        (6).to_bytes(4, "big")
        + b"target"
        + (2).to_bytes(4, "big")
        + (6).to_bytes(4, "big")
        + b"user.a"
        + (1).to_bytes(4, "big")
        + b"1"
        + (6).to_bytes(4, "big")
        + b"user.b"
        + (1).to_bytes(4, "big")
        + b"2"
    )


def test_every_piece_of_metadata_changes_the_id() -> None:
    base = {
        "ftype": FileType.REGULAR,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "size": 1,
        "rdev": 0,
        "target": b"",
        "xattrs": (),
    }
    ids = {file_id(file_header(**base), b"x")}  # type: ignore[arg-type]
    for key, value in [
        ("mode", 0o4644),
        ("uid", 1),
        ("gid", 1),
        ("xattrs", (("user.a", b""),)),
        ("ftype", FileType.SYMLINK),
    ]:
        ids.add(file_id(file_header(**{**base, key: value}), b"x"))  # type: ignore[arg-type]
    ids.add(file_id(file_header(**base), b"y"))  # type: ignore[arg-type]
    assert len(ids) == 7
    # The order xattrs come in does not matter.
    a = file_header(FileType.REGULAR, 0o644, 0, 0, 0, 0, b"", (("user.a", b"1"), ("user.b", b"2")))
    b = file_header(FileType.REGULAR, 0o644, 0, 0, 0, 0, b"", (("user.b", b"2"), ("user.a", b"1")))
    assert a == b


def test_trees_round_trip_and_are_canonical() -> None:
    meta = DirMeta(0o1777, 1, 2, (("user.x", b"\x00\xff"),))
    data = encode_tree({"b": (ID, meta), "a": (ID, DirMeta())}, {"z": ID, "y": ID})
    assert data == encode_tree({"a": (ID, DirMeta()), "b": (ID, meta)}, {"y": ID, "z": ID})
    assert data.startswith(b'{"dirs":{"a":{"gid":0,"mode":493,"tree":"aaaa')
    tree = decode_tree(data, "t")
    assert tree.dirs == {"a": (ID, DirMeta()), "b": (ID, meta)}
    assert dict(tree.files) == {"y": ID, "z": ID}


@pytest.mark.parametrize(
    "doc",
    [
        b'{"dirs":{},"files":{"../x":"' + ID.encode() + b'"}}',
        b'{"dirs":{},"files":{"a/b":"' + ID.encode() + b'"}}',
        b'{"dirs":{},"files":{"..":"' + ID.encode() + b'"}}',
        b'{"dirs":{},"files":{"":"' + ID.encode() + b'"}}',
        b'{"dirs":{},"files":{"a":"short"}}',
        b'{"dirs":{},"files":{"a":1}}',
        b'{"dirs":{"a":{"tree":"x","mode":1,"uid":0,"gid":0}},"files":{}}',
        b'{"dirs":{"a":{"tree":"' + ID.encode() + b'","mode":-1,"uid":0,"gid":0}},"files":{}}',
        b"[]",
        b"not json",
    ],
)
def test_malformed_trees_are_refused(doc: bytes) -> None:
    with pytest.raises(ValueError):
        decode_tree(doc, "t")


def test_commits_round_trip() -> None:
    cid, data = encode_commit(
        parent=None,
        timestamp=5,
        tree=ID,
        root=DirMeta(),
        image="oci:/x:1",
        manifest_digest="sha256:" + "1" * 64,
        config_digest="sha256:" + "2" * 64,
        version="1.0",
        subject="s",
        diff_ids=["sha256:" + "3" * 64],
    )
    commit = decode_commit(cid, data, "c")
    assert commit.id == cid and commit.tree == ID and commit.version == "1.0"
    assert (
        encode_commit(**{k: v for k, v in commit.body().items() if k != "root"}, root=commit.root)[
            0
        ]
        == cid
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["images/default", "deploy/default/0", "a", "x_y-z.1+2@3:4"])
def test_valid_ref_names(name: str) -> None:
    assert check_ref_name(name) == name


@pytest.mark.parametrize("name", ["", "/a", "a/", "a/../b", "./a", ".a", "a b", "a\x00"])
def test_invalid_ref_names(name: str) -> None:
    with pytest.raises(InvalidInputError):
        check_ref_name(name)
