"""The /etc three-way merge — atoll.sysroot.etcmerge."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.errors import EtcMergeConflictError, InvalidInputError, NoSpaceError
from atoll.fsutil import TMP_PREFIX
from atoll.sysroot import etcmerge
from atoll.sysroot.etcmerge import (
    EtcChange,
    EtcChangeKind,
    EtcConflict,
    EtcConflictResolution,
    EtcFileType,
    EtcMergeResult,
    EtcMergeStrategy,
    EtcMergeWarning,
    diff_etc,
    merge_etc,
)

MODIFIED, ADDED, DELETED, METADATA = (
    EtcChangeKind.MODIFIED,
    EtcChangeKind.ADDED,
    EtcChangeKind.DELETED,
    EtcChangeKind.METADATA,
)


@dataclass(frozen=True)
class Trees:
    old: Path
    local: Path
    new: Path
    dest: Path

    def merge(self, strategy: EtcMergeStrategy = EtcMergeStrategy.KEEP_LOCAL) -> EtcMergeResult:
        return merge_etc(self.old, self.local, self.new, self.dest, strategy=strategy)

    def put(self, rel: str, text: str, *where: str, mode: int = 0o644) -> None:
        """Write file *rel* into the named trees ("old", "local", "new"; all if none)."""
        for name in where or ("old", "local", "new"):
            path = getattr(self, name) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_text(text)
            path.chmod(mode)

    def link(self, rel: str, target: str, *where: str) -> None:
        for name in where or ("old", "local", "new"):
            path = getattr(self, name) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(target)


@pytest.fixture
def trees(tmp_path: Path) -> Trees:
    t = Trees(tmp_path / "old", tmp_path / "local", tmp_path / "new", tmp_path / "merged")
    for root in (t.old, t.local, t.new):
        root.mkdir()
        root.chmod(0o755)
    return t


def kinds(changes: object) -> dict[str, EtcChangeKind]:
    assert isinstance(changes, list | tuple)
    return {c.path: c.kind for c in changes}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(TMP_PREFIX)]


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree except atime: type, metadata, inode, content."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                body: object = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = path.readlink()
            else:
                body = None
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in _listxattr(path)}
            seen[str(path.relative_to(root))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_ino,
                st.st_nlink,
                st.st_mtime_ns,
                xattrs,
                body,
            )
    return seen


def _listxattr(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def require_user_xattrs(where: Path) -> None:
    probe = where / "xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.atoll.probe", b"1")
    except OSError as exc:
        pytest.skip(f"the file system of {where} does not take user.* xattrs: {exc.strerror}")
    finally:
        probe.unlink()


# --- the rows of the table ------------------------------------------------------


def test_unchanged_file_takes_the_new_image_version(trees: Trees) -> None:
    trees.put("motd", "v1\n")
    trees.put("motd", "v2\n", "new", mode=0o640)
    result = trees.merge()
    assert (trees.dest / "motd").read_text() == "v2\n"
    assert stat.S_IMODE((trees.dest / "motd").stat().st_mode) == 0o640
    assert result.changes == ()
    assert result.conflicts == ()


def test_file_dropped_by_the_new_image_and_untouched_locally_disappears(trees: Trees) -> None:
    trees.put("old.conf", "x\n", "old", "local")
    trees.put("dir/gone.conf", "x\n", "old", "local")
    trees.put("kept", "k\n")
    result = trees.merge()
    assert not (trees.dest / "old.conf").exists()
    assert not (trees.dest / "dir").exists()
    assert (trees.dest / "kept").read_text() == "k\n"
    assert result.changes == ()


def test_file_added_by_the_new_image_appears(trees: Trees) -> None:
    trees.put("fresh.d/a.conf", "a\n", "new")
    trees.merge()
    assert (trees.dest / "fresh.d/a.conf").read_text() == "a\n"


def test_local_modification_replaces_the_new_image_version(trees: Trees) -> None:
    trees.put("hosts", "image 1\n")
    trees.put("hosts", "mine\n", "local", mode=0o600)
    trees.put("hosts", "image 2\n", "new")
    result = trees.merge()
    assert (trees.dest / "hosts").read_text() == "mine\n"
    assert stat.S_IMODE((trees.dest / "hosts").stat().st_mode) == 0o600
    assert result.changes == (EtcChange("hosts", MODIFIED),)


def test_local_modification_survives_the_new_image_dropping_the_file(trees: Trees) -> None:
    trees.put("legacy.conf", "image 1\n", "old")
    trees.put("legacy.conf", "mine\n", "local")
    result = trees.merge()
    assert (trees.dest / "legacy.conf").read_text() == "mine\n"
    assert kinds(result.changes) == {"legacy.conf": MODIFIED}


def test_locally_added_file_wins_over_one_the_new_image_added(trees: Trees) -> None:
    trees.put("added.conf", "mine\n", "local")
    trees.put("both.conf", "mine\n", "local")
    trees.put("both.conf", "image 2\n", "new")
    result = trees.merge()
    assert (trees.dest / "added.conf").read_text() == "mine\n"
    assert (trees.dest / "both.conf").read_text() == "mine\n"
    assert kinds(result.changes) == {"added.conf": ADDED, "both.conf": ADDED}


def test_local_deletion_stays_even_if_the_new_image_still_ships_it(trees: Trees) -> None:
    trees.put("unwanted.conf", "x\n", "old", "new")
    result = trees.merge()
    assert not (trees.dest / "unwanted.conf").exists()
    assert result.changes == (EtcChange("unwanted.conf", DELETED),)
    assert result.warnings == ()  # the new image did not change it


def test_local_deletion_stays_when_the_new_image_changed_it_with_a_warning(trees: Trees) -> None:
    trees.put("unwanted.conf", "v1\n", "old")
    trees.put("unwanted.conf", "v2\n", "new")
    trees.put("unwanted.d/a", "v1\n", "old")
    trees.put("unwanted.d/a", "v1\n", "new")
    trees.put("unwanted.d/b", "new in v2\n", "new")
    result = trees.merge()
    assert not (trees.dest / "unwanted.conf").exists()
    assert not (trees.dest / "unwanted.d").exists()
    assert kinds(result.changes) == {"unwanted.conf": DELETED, "unwanted.d": DELETED}
    assert [w.path for w in result.warnings] == ["unwanted.conf", "unwanted.d"]
    assert "stays deleted" in result.warnings[0].message


def test_chmod_only_with_new_content_gives_new_content_and_local_mode(trees: Trees) -> None:
    trees.put("sudoers", "v1\n", mode=0o644)
    (trees.local / "sudoers").chmod(0o440)
    trees.put("sudoers", "v2\n", "new", mode=0o644)
    result = trees.merge()
    assert (trees.dest / "sudoers").read_text() == "v2\n"
    assert stat.S_IMODE((trees.dest / "sudoers").stat().st_mode) == 0o440
    assert result.changes == (EtcChange("sudoers", METADATA),)


def test_metadata_only_change_kept_when_the_new_image_dropped_the_file(trees: Trees) -> None:
    trees.put("x.conf", "v1\n", "old", "local")
    (trees.local / "x.conf").chmod(0o600)
    result = trees.merge()
    assert (trees.dest / "x.conf").read_text() == "v1\n"
    assert stat.S_IMODE((trees.dest / "x.conf").stat().st_mode) == 0o600
    assert kinds(result.changes) == {"x.conf": METADATA}


def test_chown_is_carried_and_setuid_survives_it(trees: Trees) -> None:
    trees.put("tool", "v1\n", mode=0o755)
    os.chown(trees.local / "tool", 1234, 5678)
    (trees.local / "tool").chmod(0o4755)  # chown clears setuid: the copy must chmod after
    trees.put("tool", "v2\n", "new", mode=0o755)
    result = trees.merge()
    st = (trees.dest / "tool").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert (trees.dest / "tool").read_text() == "v2\n"
    assert result.changes == (EtcChange("tool", METADATA),)


def test_directory_mode_and_owner_changes_are_carried(trees: Trees) -> None:
    trees.put("ssh/sshd_config", "v1\n")
    os.chown(trees.local / "ssh", 0, 4321)
    (trees.local / "ssh").chmod(0o750)
    trees.put("ssh/sshd_config", "v2\n", "new")
    trees.put("ssh/moduli", "new\n", "new")
    result = trees.merge()
    st = (trees.dest / "ssh").stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 0o750)
    assert (trees.dest / "ssh/sshd_config").read_text() == "v2\n"
    assert (trees.dest / "ssh/moduli").read_text() == "new\n"
    assert result.changes == (EtcChange("ssh", METADATA),)


def test_untouched_directory_takes_the_new_image_metadata(trees: Trees) -> None:
    trees.put("pki/a", "v1\n")
    trees.put("pki/b", "mine\n", "local")  # a change inside, not to the directory itself
    (trees.new / "pki").chmod(0o700)
    trees.merge()
    assert stat.S_IMODE((trees.dest / "pki").stat().st_mode) == 0o700
    assert stat.S_IMODE(trees.dest.stat().st_mode) == 0o755


def test_root_directory_metadata_change_is_carried(trees: Trees) -> None:
    trees.put("a", "v1\n")
    trees.local.chmod(0o750)
    result = trees.merge()
    assert stat.S_IMODE(trees.dest.stat().st_mode) == 0o750
    assert result.changes == (EtcChange(".", METADATA),)


def test_xattrs_are_compared_and_carried(trees: Trees, tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    trees.put("labelled", "v1\n")
    trees.put("kept-xattr", "v1\n")
    os.setxattr(trees.local / "labelled", "user.atoll.test", b"local")
    for root in (trees.old, trees.local, trees.new):
        os.setxattr(root / "kept-xattr", "user.atoll.image", b"image")
    trees.put("labelled", "v2\n", "new")
    result = trees.merge()
    assert os.getxattr(trees.dest / "labelled", "user.atoll.test") == b"local"
    assert (trees.dest / "labelled").read_text() == "v2\n"
    assert os.getxattr(trees.dest / "kept-xattr", "user.atoll.image") == b"image"
    assert result.changes == (EtcChange("labelled", METADATA),)


def test_an_xattr_the_destination_refuses_is_skipped_with_a_warning(
    trees: Trees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_user_xattrs(tmp_path)
    trees.put("f", "v1\n")
    os.setxattr(trees.local / "f", "user.atoll.refused", b"x")
    real_setxattr = os.setxattr

    def refusing(target: int | Path, name: str, value: bytes, *a: object, **k: object) -> None:
        if name == "user.atoll.refused":
            raise OSError(95, "Operation not supported")
        real_setxattr(target, name, value, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "setxattr", refusing)
    result = trees.merge()
    assert (trees.dest / "f").read_text() == "v1\n"
    assert result.warnings == (
        EtcMergeWarning(
            "f", "extended attribute user.atoll.refused not copied: Operation not supported"
        ),
    )


def test_mtime_alone_is_not_a_change(trees: Trees) -> None:
    trees.put("touched", "v1\n")
    os.utime(trees.local / "touched", ns=(1, 1))
    trees.put("touched", "v2\n", "new")
    assert diff_etc(trees.old, trees.local) == []
    trees.merge()
    assert (trees.dest / "touched").read_text() == "v2\n"


def test_same_size_difference_past_the_first_chunk_is_found(
    trees: Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcmerge, "CHUNK_SIZE", 4)
    trees.put("big", "0123456789abcdef")
    trees.put("big", "0123456789abcdeX", "local")
    assert diff_etc(trees.old, trees.local) == [EtcChange("big", MODIFIED)]


def test_symlink_target_change_is_carried(trees: Trees) -> None:
    trees.link("localtime", "../usr/share/zoneinfo/UTC")
    trees.link("localtime", "../usr/share/zoneinfo/Europe/Paris", "local")
    trees.link("os-release", "../usr/lib/os-release")
    trees.link("os-release", "../usr/lib/os-release-v2", "new")
    result = trees.merge()
    assert (trees.dest / "localtime").readlink() == Path("../usr/share/zoneinfo/Europe/Paris")
    assert (trees.dest / "os-release").readlink() == Path("../usr/lib/os-release-v2")
    assert result.changes == (EtcChange("localtime", MODIFIED),)


def test_symlink_owner_change_with_new_target_keeps_owner_and_takes_target(trees: Trees) -> None:
    trees.link("alt", "one")
    os.chown(trees.local / "alt", 1234, 1234, follow_symlinks=False)
    trees.link("alt", "two", "new")
    result = trees.merge()
    st = (trees.dest / "alt").lstat()
    assert (trees.dest / "alt").readlink() == Path("two")
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    assert result.changes == (EtcChange("alt", METADATA),)


def test_locally_added_nested_directory_is_copied_whole(trees: Trees) -> None:
    trees.put("myapp/conf.d/10-a.conf", "a\n", "local")
    trees.put("myapp/conf.d/20-b.conf", "b\n", "local", mode=0o600)
    trees.link("myapp/current", "conf.d/10-a.conf", "local")
    (trees.local / "myapp").chmod(0o750)
    # The new image happens to add the same directory, with another file.
    trees.put("myapp/conf.d/10-a.conf", "image\n", "new")
    trees.put("myapp/defaults", "d\n", "new")
    result = trees.merge()
    out = trees.dest / "myapp"
    assert (out / "conf.d/10-a.conf").read_text() == "a\n"
    assert stat.S_IMODE((out / "conf.d/20-b.conf").stat().st_mode) == 0o600
    assert (out / "current").readlink() == Path("conf.d/10-a.conf")
    assert (out / "defaults").read_text() == "d\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert kinds(result.changes) == {
        "myapp": ADDED,
        "myapp/conf.d": ADDED,
        "myapp/conf.d/10-a.conf": ADDED,
        "myapp/conf.d/20-b.conf": ADDED,
        "myapp/current": ADDED,
    }


def test_directory_dropped_by_new_image_is_recreated_for_local_changes(trees: Trees) -> None:
    trees.put("oldapp/a.conf", "v1\n", "old", "local")
    trees.put("oldapp/b.conf", "v1\n", "old", "local")
    trees.put("oldapp/b.conf", "mine\n", "local")
    (trees.old / "oldapp").chmod(0o750)
    (trees.local / "oldapp").chmod(0o750)
    result = trees.merge()
    assert sorted(p.name for p in (trees.dest / "oldapp").iterdir()) == ["b.conf"]
    assert (trees.dest / "oldapp/b.conf").read_text() == "mine\n"
    assert stat.S_IMODE((trees.dest / "oldapp").stat().st_mode) == 0o750
    assert result.changes == (EtcChange("oldapp/b.conf", MODIFIED),)


# --- type conflicts ---------------------------------------------------------------


def make_file_vs_dir(t: Trees) -> None:
    """The admin edited file ``x``; the new image turned ``x`` into a directory."""
    t.put("x", "v1\n", "old")
    t.put("x", "mine\n", "local")
    t.put("x/inner", "image 2\n", "new")


def make_dir_vs_file(t: Trees) -> None:
    """The admin edited ``d/f``; the new image turned directory ``d`` into a file."""
    t.put("d/f", "v1\n", "old")
    t.put("d/g", "v1\n", "old", "local")
    t.put("d/f", "mine\n", "local")
    t.put("d", "image 2\n", "new")


@pytest.mark.parametrize("strategy", list(EtcMergeStrategy))
@pytest.mark.parametrize("case", ["file-vs-dir", "dir-vs-file"])
def test_type_conflict(trees: Trees, tmp_path: Path, case: str, strategy: EtcMergeStrategy) -> None:
    trees.put("unrelated", "mine\n", "local")
    if case == "file-vs-dir":
        make_file_vs_dir(trees)
        path, local_type, new_type = "x", EtcFileType.FILE, EtcFileType.DIRECTORY
        local_changes = {"x": MODIFIED}
    else:
        make_dir_vs_file(trees)
        path, local_type, new_type = "d", EtcFileType.DIRECTORY, EtcFileType.FILE
        local_changes = {"d/f": MODIFIED}

    if strategy is EtcMergeStrategy.FAIL:
        with pytest.raises(EtcMergeConflictError) as info:
            trees.merge(strategy)
        assert info.value.exit_code == 43
        assert info.value.paths == (path,)
        assert f"{path} (local {local_type}, new image {new_type})" in info.value.message
        assert "\n" not in info.value.message
        assert not trees.dest.exists()
        assert leftovers(tmp_path) == []
        return

    result = trees.merge(strategy)
    resolution = EtcConflictResolution(strategy.value)
    assert result.conflicts == (EtcConflict(path, local_type, new_type, resolution),)
    assert (trees.dest / "unrelated").read_text() == "mine\n"
    if strategy is EtcMergeStrategy.KEEP_LOCAL:
        assert snapshot(trees.dest / path).keys() == snapshot(trees.local / path).keys()
        if case == "file-vs-dir":
            assert (trees.dest / "x").read_text() == "mine\n"
        else:
            assert (trees.dest / "d/f").read_text() == "mine\n"
            assert (trees.dest / "d/g").read_text() == "v1\n"
        assert kinds(result.changes) == {**local_changes, "unrelated": ADDED}
    else:
        if case == "file-vs-dir":
            assert (trees.dest / "x/inner").read_text() == "image 2\n"
        else:
            assert (trees.dest / "d").read_text() == "image 2\n"
        assert kinds(result.changes) == {"unrelated": ADDED}


def test_fail_names_every_conflicting_path(trees: Trees) -> None:
    make_file_vs_dir(trees)
    make_dir_vs_file(trees)
    trees.link("resolv.conf", "../run/resolv.conf", "old", "new")
    trees.put("resolv.conf", "nameserver 10.0.0.1\n", "local")
    with pytest.raises(EtcMergeConflictError) as info:
        trees.merge(EtcMergeStrategy.FAIL)
    assert info.value.paths == ("d", "resolv.conf", "x")
    assert "3 path(s)" in info.value.message
    assert "resolv.conf (local file, new image symlink)" in info.value.message


def test_fail_strategy_without_conflicts_merges(trees: Trees) -> None:
    trees.put("a", "v1\n")
    trees.put("a", "mine\n", "local")
    result = trees.merge(EtcMergeStrategy.FAIL)
    assert (trees.dest / "a").read_text() == "mine\n"
    assert result.conflicts == ()


def test_file_replaced_by_symlink_in_new_image_is_a_conflict(trees: Trees) -> None:
    trees.put("resolv.conf", "nameserver 1.1.1.1\n", "old")
    trees.put("resolv.conf", "nameserver 10.0.0.1\n", "local")
    trees.link("resolv.conf", "../run/systemd/resolve/stub-resolv.conf", "new")
    result = trees.merge()
    assert (trees.dest / "resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert result.conflicts == (
        EtcConflict(
            "resolv.conf", EtcFileType.FILE, EtcFileType.SYMLINK, EtcConflictResolution.KEEP_LOCAL
        ),
    )


# --- special files, hardlinks, inputs, failures -------------------------------------------


def test_special_files_are_skipped_with_warnings(trees: Trees) -> None:
    trees.put("a", "v1\n")
    os.mkfifo(trees.local / "local.fifo")
    os.mkfifo(trees.new / "new.fifo")
    trees.put("sub/b", "v1\n")
    os.mkfifo(trees.new / "sub/deep.fifo")
    result = trees.merge()
    assert sorted(p.name for p in trees.dest.iterdir()) == ["a", "sub"]
    assert sorted(p.name for p in (trees.dest / "sub").iterdir()) == ["b"]
    assert [(w.path, "fifo" in w.message) for w in result.warnings] == [
        ("local.fifo", True),
        ("new.fifo", True),
        ("sub/deep.fifo", True),
    ]
    assert result.changes == ()
    assert diff_etc(trees.old, trees.local) == []


def test_output_files_are_never_hardlinks_of_the_inputs(trees: Trees) -> None:
    trees.put("same", "v1\n", "old", "local")
    trees.put("mine", "v1\n", "old")
    trees.put("mine", "mine\n", "local")
    trees.put("meta", "v1\n", "old", "local")
    (trees.local / "meta").chmod(0o600)
    (trees.new / "dir").mkdir()
    # Like a store checkout: the image trees share inodes.
    for rel in ("same", "mine", "meta"):
        os.link(trees.old / rel, trees.new / rel)
    os.link(trees.old / "same", trees.new / "dir/same-again")
    trees.merge()
    inputs = {
        p.lstat().st_ino
        for root in (trees.old, trees.local, trees.new)
        for p in root.rglob("*")
        if p.is_file()
    }
    outputs = [p for p in trees.dest.rglob("*") if p.is_file()]
    assert sorted(str(p.relative_to(trees.dest)) for p in outputs) == [
        "dir/same-again",
        "meta",
        "mine",
        "same",
    ]
    for p in outputs:
        st = p.lstat()
        assert st.st_ino not in inputs, p
        assert st.st_nlink == 1, p


def test_inputs_are_never_modified(trees: Trees, tmp_path: Path) -> None:
    require_user_xattrs(tmp_path)
    trees.put("same", "v1\n")
    trees.put("mod", "v1\n")
    trees.put("mod", "mine\n", "local")
    trees.put("meta", "v1\n")
    trees.put("meta", "v2\n", "new")
    (trees.local / "meta").chmod(0o600)
    os.setxattr(trees.local / "meta", "user.atoll.x", b"1")
    trees.put("deleted", "v1\n", "old", "new")
    trees.put("added/deep/f", "a\n", "local")
    make_file_vs_dir(trees)
    os.mkfifo(trees.new / "fifo")
    trees.link("l", "a")
    trees.link("l", "b", "local")
    before = [snapshot(r) for r in (trees.old, trees.local, trees.new)]
    for strategy in (EtcMergeStrategy.KEEP_LOCAL, EtcMergeStrategy.KEEP_NEW):
        trees.merge(strategy)
        shutil.rmtree(trees.dest)
    diff_etc(trees.old, trees.local)
    assert [snapshot(r) for r in (trees.old, trees.local, trees.new)] == before


def test_dirs_are_private_while_built_and_get_their_modes_at_the_end(trees: Trees) -> None:
    trees.put("ro/secret", "s\n", mode=0o400)
    (trees.new / "ro").chmod(0o500)
    trees.put("added/x", "x\n", "local")
    (trees.local / "added").chmod(0o555)
    trees.merge()
    assert stat.S_IMODE((trees.dest / "ro").stat().st_mode) == 0o500
    assert stat.S_IMODE((trees.dest / "added").stat().st_mode) == 0o555
    assert stat.S_IMODE((trees.dest / "ro/secret").stat().st_mode) == 0o400


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_leaves_nothing_behind(trees: Trees, small_disk: Path) -> None:
    trees.put("small", "v1\n")
    trees.put("big.d/blob", "x" * (512 * 1024), "local")
    dest = small_disk / "etc"
    with pytest.raises(NoSpaceError) as info:
        merge_etc(trees.old, trees.local, trees.new, dest)
    assert str(dest) in info.value.message
    assert "\n" not in info.value.message
    assert list(small_disk.iterdir()) == []


def test_destination_must_not_exist(trees: Trees) -> None:
    trees.dest.mkdir()
    with pytest.raises(InvalidInputError, match="already exists"):
        trees.merge()


def test_destination_inside_an_input_is_refused(trees: Trees) -> None:
    with pytest.raises(InvalidInputError, match="inside the input"):
        merge_etc(trees.old, trees.local, trees.new, trees.local / "merged")
    assert not (trees.local / "merged").exists()


def test_input_that_is_not_a_directory_is_refused(trees: Trees, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInputError, match=r"local /etc, .*/missing, cannot be read"):
        merge_etc(trees.old, tmp_path / "missing", trees.new, trees.dest)
    with pytest.raises(InvalidInputError, match=r"new image's /etc, .*/file, is not a directory"):
        merge_etc(trees.old, trees.local, tmp_path / "file", trees.dest)
    with pytest.raises(InvalidInputError, match=r"old image's /etc, .*/file, is not a directory"):
        diff_etc(tmp_path / "file", trees.local)
    assert not trees.dest.exists()


# --- diff_etc and JSON -----------------------------------------------------------------


def test_diff_lists_exactly_the_local_changes(trees: Trees) -> None:
    trees.put("same", "v1\n")
    trees.put("mod", "v1\n")
    trees.put("mod", "mine\n", "local")
    trees.put("chmodded", "v1\n")
    (trees.local / "chmodded").chmod(0o600)
    trees.put("gone", "v1\n", "old")
    trees.put("gone.d/a", "v1\n", "old")
    trees.put("gone.d/b", "v1\n", "old")
    trees.put("new.d/sub/f", "f\n", "local")
    trees.put("was-file", "v1\n", "old")
    trees.put("was-file/inside", "i\n", "local")
    trees.link("link", "a")
    trees.link("link", "b", "local")
    trees.put("image-only-change", "v1\n", "old", "local")
    trees.put("image-only-change", "v2\n", "new")  # the new image does not matter here
    assert diff_etc(trees.old, trees.local) == [
        EtcChange("chmodded", METADATA),
        EtcChange("gone", DELETED),
        EtcChange("gone.d", DELETED),
        EtcChange("link", MODIFIED),
        EtcChange("mod", MODIFIED),
        EtcChange("new.d", ADDED),
        EtcChange("new.d/sub", ADDED),
        EtcChange("new.d/sub/f", ADDED),
        EtcChange("was-file", MODIFIED),
        EtcChange("was-file/inside", ADDED),
    ]


def test_diff_of_identical_trees_is_empty(trees: Trees) -> None:
    trees.put("a/b/c", "v1\n", "old", "local")
    assert diff_etc(trees.old, trees.local) == []


def test_result_json_is_camel_case_and_round_trips(trees: Trees) -> None:
    make_file_vs_dir(trees)
    os.mkfifo(trees.local / "fifo")
    result = trees.merge()
    data = result.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "changes": [{"path": "x", "kind": "modified"}],
        "conflicts": [
            {"path": "x", "localType": "file", "newType": "directory", "resolution": "keep-local"}
        ],
        "warnings": [{"path": "fifo", "message": result.warnings[0].message}],
    }
    assert EtcMergeResult.from_json(data) == result


def test_malformed_result_json_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        EtcMergeResult.from_json({"changes": [{"path": "x", "kind": "renamed"}]})


def test_the_example_in_docs_updates(trees: Trees) -> None:
    trees.put("chrony.conf", "pool 2.debian.pool.ntp.org\n")
    trees.put("motd", "image 1\n")
    trees.put("ssh/sshd_config", "PermitRootLogin no\n")
    trees.put("chrony.conf", "server ntp.example.com\n", "local")
    (trees.local / "ssh/sshd_config").chmod(0o600)
    (trees.local / "motd").unlink()
    trees.put("myapp/app.conf", "x=1\n", "local")
    trees.put("ssh/sshd_config", "PermitRootLogin no\nUseDNS no\n", "new")
    trees.put("motd", "image 2\n", "new")
    trees.put("issue", "Welcome\n", "new")
    assert [(c.kind.value, c.path) for c in diff_etc(trees.old, trees.local)] == [
        ("modified", "chrony.conf"),
        ("deleted", "motd"),
        ("added", "myapp"),
        ("added", "myapp/app.conf"),
        ("metadata", "ssh/sshd_config"),
    ]
    result = trees.merge()
    files = sorted(str(p.relative_to(trees.dest)) for p in trees.dest.rglob("*") if p.is_file())
    assert files == ["chrony.conf", "issue", "myapp/app.conf", "ssh/sshd_config"]
    assert (trees.dest / "chrony.conf").read_text() == "server ntp.example.com\n"
    assert (trees.dest / "ssh/sshd_config").read_text() == "PermitRootLogin no\nUseDNS no\n"
    assert stat.S_IMODE((trees.dest / "ssh/sshd_config").stat().st_mode) == 0o600
    assert [w.path for w in result.warnings] == ["motd"]
