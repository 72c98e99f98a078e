"""Importing OCI images: layers applied in order, every file once, unsafe input refused."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.errors import DigestMismatchError, LayerError
from atoll.oci.digest import Digest
from atoll.store import EntryKind, Store
from helpers.stores import import_image, open_image, walk
from helpers.treeimage import (
    OPAQUE,
    WHITEOUT,
    Node,
    build_tree_image,
    directory,
    hardlink,
    symlink,
)


def disk_usage(root: Path) -> int:
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = Path(dirpath, name).lstat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def test_a_second_version_adds_only_its_changed_files(tmp_path: Path, store: Store) -> None:
    rng = random.Random(1)
    base = {f"usr/lib/f{i}": rng.randbytes(8192) for i in range(60)}
    v1 = build_tree_image(tmp_path / "img", [base, {"etc/os-release": "VERSION=1\n"}], ref="1")
    changed = {**base, "usr/lib/f0": rng.randbytes(8192), "usr/lib/new": rng.randbytes(8192)}
    v2 = build_tree_image(tmp_path / "img", [changed, {"etc/os-release": "VERSION=2\n"}], ref="2")

    first = import_image(store, v1, ref="images/default")
    size_one = disk_usage(store.objects)
    second = import_image(store, v2, ref="images/default")
    size_two = disk_usage(store.objects)

    assert first.stats.files_total == 61 and first.stats.files_new == 61
    # f0 changed, "new" was added, os-release changed: three new file objects.
    assert second.stats.files_total == 62 and second.stats.files_new == 3
    assert second.stats.bytes_fetched > 0 and second.stats.bytes_written < 4 * 8192 + 4096
    # One version's size plus the changed files (and a few small trees and a commit).
    assert size_two - size_one < 3 * 8192 + 16 * 4096
    assert store.commit(second.commit_id).parent == first.commit_id
    assert store.ref("images/default") == second.commit_id
    assert store.read_file(second.commit_id, "etc/os-release") == b"VERSION=2\n"
    same = store.lookup(first.commit_id, "usr/lib/f1")
    assert same == store.lookup(second.commit_id, "usr/lib/f1")


def test_reimporting_an_image_reads_no_layer(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(tmp_path / "img", [{"a": "x"}])
    first = import_image(store, image)
    again = import_image(store, image)
    assert again.commit_id == first.commit_id
    assert again.stats.reused and again.stats.bytes_fetched == 0


def test_the_same_image_under_another_name_reads_no_layer(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(tmp_path / "img", [{"a": "x"}])
    first = import_image(store, image)
    source, manifest, config_raw = open_image(image)
    with source:
        mirrored = store.import_image(
            source,
            manifest,
            config_raw,
            image="docker://mirror.example/os:1",
            manifest_digest=Digest.parse(image.manifest_digest),
            ref="images/mirror",
        )
    assert mirrored.stats.reused and mirrored.commit_id != first.commit_id
    commit = store.commit(mirrored.commit_id)
    assert commit.image == "docker://mirror.example/os:1"
    assert commit.tree == store.commit(first.commit_id).tree
    assert store.ref("images/mirror") == mirrored.commit_id
    assert store.fsck().ok


def test_whiteouts_and_opaque_directories(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [
            {
                "etc/keep": "k",
                "etc/gone": "g",
                "opt/app/old-1": "1",
                "opt/app/sub/old-2": "2",
                "var/dir/x": "x",
            },
            # Whiteouts hide lower layers only: "opt/app/new" of this layer stays,
            # even though the opaque marker comes after it in the tar.
            {
                "etc/gone": WHITEOUT,
                "opt/app/new": "n",
                "opt/app": OPAQUE,
                "var/dir": WHITEOUT,
            },
            {"etc/gone": "back again"},
        ],
    )
    commit = import_image(store, image).commit_id
    names = {e.path for e in store.list_dir(commit, "opt/app")}
    assert names == {"opt/app/new"}
    assert store.lookup(commit, "var/dir") is None
    assert store.lookup(commit, "var") is not None
    assert store.read_file(commit, "etc/keep") == b"k"
    assert store.read_file(commit, "etc/gone") == b"back again"


def test_hardlinks_within_and_across_layers_share_one_object(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [
            {
                "usr/bin/python3.11": Node(content=b"ELF", mode=0o755),
                "usr/bin/py": hardlink("usr/bin/python3.11"),
            },
            {"usr/local/bin/python": hardlink("usr/bin/python3.11")},
        ],
    )
    commit = import_image(store, image).commit_id
    ids = {
        store.lookup(commit, p).object_id
        for p in ("usr/bin/python3.11", "usr/bin/py", "usr/local/bin/python")
    }  # type: ignore[union-attr]
    assert len(ids) == 1
    dest = tmp_path / "co"
    store.checkout(commit, dest)
    assert (dest / "usr/bin/py").stat().st_ino == (dest / "usr/local/bin/python").stat().st_ino


def test_modes_owners_xattrs_and_symlinks_are_kept(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [
            {
                "usr/bin/su": Node(content=b"su", mode=0o4755),
                "usr/bin/wall": Node(content=b"wall", mode=0o2755, gid=5),
                "tmp": directory(0o1777),
                "home/user": directory(0o700, uid=1000, gid=1000),
                "home/user/.profile": Node(content=b"p", mode=0o600, uid=1000, gid=1000),
                "usr/bin/ping": Node(
                    content=b"ping",
                    mode=0o755,
                    xattrs={"security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)},
                ),
                "srv/data": directory(0o750, xattrs={"user.tag": b"dir-attr"}),
                "srv/data/file": Node(content=b"d", xattrs={"user.a": b"1", "trusted.b": b"2"}),
                "lib": symlink("usr/lib"),
                "usr/lib/os-release": "ID=test\n",
                "etc/os-release": symlink("../usr/lib/os-release"),
            }
        ],
    )
    commit = import_image(store, image).commit_id
    dest = tmp_path / "co"
    store.checkout(commit, dest, copy_paths=())
    tree = walk(dest)
    assert tree["usr/bin/su"][1] == 0o4755
    assert tree["usr/bin/wall"][1:4] == (0o2755, 0, 5)
    assert tree["tmp"][1] == 0o1777
    assert tree["home/user"][1:4] == (0o700, 1000, 1000)
    assert tree["home/user/.profile"][1:4] == (0o600, 1000, 1000)
    assert dict(tree["usr/bin/ping"][4])["security.capability"].startswith(b"\x01\x00\x00\x02")
    assert dict(tree["srv/data"][4]) == {"user.tag": b"dir-attr"}
    assert dict(tree["srv/data/file"][4]) == {"user.a": b"1", "trusted.b": b"2"}
    assert tree["lib"][0] == stat.S_IFLNK and tree["lib"][5] == "usr/lib"
    assert store.read_file(commit, "etc/os-release") == b"ID=test\n"  # followed inside the commit
    entry = store.lookup(commit, "lib")
    assert entry is not None and entry.kind is EntryKind.SYMLINK and entry.target == "usr/lib"


def test_metadata_is_part_of_a_file_objects_identity(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [
            {
                "a": Node(content=b"same", mode=0o644),
                "b": Node(content=b"same", mode=0o755),
                "c": Node(content=b"same", mode=0o644, uid=1),
                "d": Node(content=b"same", mode=0o644, xattrs={"user.x": b"1"}),
                "e": Node(content=b"same", mode=0o644),
            }
        ],
    )
    commit = import_image(store, image).commit_id
    ids = [store.lookup(commit, n).object_id for n in "abcde"]  # type: ignore[union-attr]
    assert len(set(ids[:4])) == 4 and ids[4] == ids[0]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_layer_compression_gives_the_same_commit(
    tmp_path: Path, store: Store, compression: str
) -> None:
    files = {
        "usr/share/doc/readme": "hello\n" * 1000,
        "usr/bin/tool": Node(content=b"x", mode=0o755),
    }
    image = build_tree_image(tmp_path / compression, [files], compression=compression)
    commit = store.commit(import_image(store, image).commit_id)
    reference = build_tree_image(tmp_path / "ref", [files], compression="gzip")
    other = Store.create(tmp_path / "other")
    assert other.commit(import_image(other, reference).commit_id).tree == commit.tree


def test_commit_records_where_the_image_came_from(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [{"a": "x"}],
        labels={"org.opencontainers.image.version": "41.2"},
        created="2026-03-04T05:06:07.123456789Z",
    )
    commit = store.commit(import_image(store, image).commit_id)
    assert commit.version == "41.2"
    assert commit.timestamp == 1772600767
    assert commit.image == image.name
    assert commit.manifest_digest == image.manifest_digest
    assert commit.diff_ids == image.diff_ids
    assert "41.2" in commit.subject


def _nothing_committed(store: Store) -> None:
    assert store.commit_ids() == []
    assert store.refs() == {}
    assert not any((store.path / "tmp").iterdir())


def test_a_layer_that_is_not_what_the_manifest_says_is_refused(
    tmp_path: Path, store: Store
) -> None:
    image = build_tree_image(tmp_path / "img", [{"a": "one"}, {"b": "two"}])
    # Another valid layer under the second layer's name: it parses, but its digest is wrong.
    other = build_tree_image(tmp_path / "other", [{"b": "evil"}], compression="gzip")
    image.blob_path(image.layer_digests[1]).write_bytes(
        other.blob_path(other.layer_digests[0]).read_bytes()
    )
    with pytest.raises(DigestMismatchError, match=image.layer_digests[1]):
        import_image(store, image, ref="images/default")
    _nothing_committed(store)


def test_a_corrupt_layer_is_reported_as_a_digest_mismatch(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(tmp_path / "img", [{"a": "one" * 1000}])
    blob = image.blob_path(image.layer_digests[0])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError):
        import_image(store, image)
    _nothing_committed(store)


def test_a_layer_that_does_not_match_its_diff_id_is_refused(tmp_path: Path, store: Store) -> None:
    wrong = "sha256:" + "0" * 64
    image = build_tree_image(tmp_path / "img", [{"a": "x"}], diff_ids=[wrong])
    with pytest.raises(DigestMismatchError, match="diff_id"):
        import_image(store, image, ref="images/default")
    _nothing_committed(store)


@pytest.mark.parametrize(
    ("layers", "entry", "reason"),
    [
        ([{"usr/../../etc/shadow": "x"}], "usr/../../etc/shadow", "'..'"),
        ([{"/etc/shadow": "x"}], "/etc/shadow", "absolute"),
        ([{"etc": symlink("/host/etc"), "etc/passwd": "x"}], "etc/passwd", "symlink 'etc'"),
        ([{"etc": symlink("/host/etc")}, {"etc/passwd": "x"}], "etc/passwd", "symlink 'etc'"),
        ([{"etc": "a file"}, {"etc/passwd": "x"}], "etc/passwd", "file 'etc'"),
        ([{"dev/sda": Node("block", major=8, minor=0)}], "dev/sda", "device node"),
        ([{"run/pipe": Node("fifo")}], "run/pipe", "fifo"),
        ([{"a": hardlink("missing")}], "a", "not in the image"),
        ([{"d/x": "x", "a": hardlink("d")}], "a", "directory"),
        ([{"usr/" + "n" * 256: "x"}], "usr/" + "n" * 256, "longer than 255 bytes"),
    ],
)
def test_unsafe_entries_are_refused_with_the_entry_named(
    tmp_path: Path, store: Store, layers: list[dict[str, object]], entry: str, reason: str
) -> None:
    image = build_tree_image(tmp_path / "img", layers, parents=False)  # type: ignore[arg-type]
    with pytest.raises(LayerError) as caught:
        import_image(store, image, ref="images/default")
    message = str(caught.value)
    assert f"'{entry}'" in message and reason in message
    assert image.layer_digests[-1] in message or image.layer_digests[0] in message
    assert "\n" not in message
    _nothing_committed(store)


def test_a_leading_dot_slash_is_fine(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(tmp_path / "img", [{"./usr/bin/x": "x", "./": directory(0o755)}])
    commit = import_image(store, image).commit_id
    assert store.read_file(commit, "usr/bin/x") == b"x"


def test_devices_are_imported_when_allowed(tmp_path: Path, store: Store) -> None:
    image = build_tree_image(
        tmp_path / "img",
        [{"dev/null": Node("char", mode=0o666, major=1, minor=3), "dev/p": Node("fifo")}],
    )
    commit = import_image(store, image, allow_devices=True).commit_id
    dest = tmp_path / "co"
    store.checkout(commit, dest)
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_ISFIFO(os.lstat(dest / "dev/p").st_mode)
    assert store.fsck().ok


MEASURE = """
import sys, tracemalloc
from pathlib import Path
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.manifest import parse_manifest
from atoll.oci.transports import ImageName
from atoll.oci.transports.layout import LayoutSource
from atoll.store import Store

store = Store.create(Path(sys.argv[1]))
with LayoutSource(ImageName.parse(sys.argv[2]), SystemContext()) as source:
    raw, declared = source.get_manifest(None)
    manifest = parse_manifest(raw, declared, where=sys.argv[2])
    with source.open_blob(manifest.config) as chunks:
        config = b"".join(chunks)
    # Measured from here: reading the manifest is the transport's business.
    tracemalloc.start()
    result = store.import_image(
        source, manifest, config, image=sys.argv[2], manifest_digest=Digest.of(raw)
    )
    print(tracemalloc.get_traced_memory()[1], result.stats.files_new, result.commit_id)
"""


def test_memory_stays_flat_for_a_large_layer(tmp_path: Path) -> None:
    big = os.urandom(40 << 20)
    smalls = {f"usr/share/s{i}": os.urandom(100_000) for i in range(100)}
    image = build_tree_image(tmp_path / "img", [{"usr/lib/big.so": big, **smalls}])
    layer_size = len(image.tars[0])
    assert layer_size > 50_000_000
    # In a process of its own, so no other test's threads allocate meanwhile.
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "store"), image.name],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_text, files_new, commit = proc.stdout.split()
    peak = int(peak_text)
    assert int(files_new) == 101
    # What may be in flight is bounded: the feed's queue of compressed pieces
    # (tarstream._QUEUE_DEPTH), a small file read whole (importer.SMALL_FILE) and
    # the layer's record (one row an entry). How full the queue is depends on
    # timing: 12.1 MiB was seen on a loaded machine, under 12 on a quiet one.
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a {layer_size / 2**20:.0f} MiB layer"
    store = Store.open(tmp_path / "store")
    entry = store.lookup(commit, "usr/lib/big.so")
    assert entry is not None and store.object_path(entry.object_id).read_bytes() == big
