"""The cache of the Debian tree (helpers.debian), with debootstrap replaced by a stub
that writes a few files: atomic builds, stale builds removed, the tree prepared."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from atoll.demo import basetree
from helpers import debian
from helpers.parts import missing


def fake_debootstrap(target: Path) -> None:
    for d in (
        "etc/systemd/system/timers.target.wants",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dbus",
        "var/log/apt",
        "usr/bin",
    ):
        (target / d).mkdir(parents=True)
    (target / "etc/shadow").write_text("root:*:20000:0:99999:7:::\nnobody:*:20000::::::\n")
    (target / "etc/machine-id").write_text("f3dc25d4d7b5429481bddd441fed8633\n")
    (target / "etc/hostname").write_text("buildhost\n")
    (target / "var/lib/dbus/machine-id").write_text("f3dc25d4d7b5429481bddd441fed8633\n")
    (target / "var/lib/apt/lists/deb.debian.org_Packages").write_text("Package: x\n")
    (target / "var/lib/apt/lists/lock").write_text("")
    (target / "var/cache/apt/pkgcache.bin").write_bytes(b"\0" * 10)
    (target / "var/cache/apt/archives/systemd_252.deb").write_bytes(b"deb")
    (target / "var/log/apt/term.log").write_text("build output\n")
    (target / "etc/systemd/system/timers.target.wants/apt-daily.timer").symlink_to(
        "/usr/lib/systemd/system/apt-daily.timer"
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []

    def stub(target: Path) -> None:
        seen.append(target)
        fake_debootstrap(target)

    monkeypatch.setattr(debian, "_debootstrap", stub)
    return seen


def test_tree_is_built_once_and_prepared(cache: Path, calls: list[Path]) -> None:
    tree = debian.ensure_debian_tree(cache)
    assert debian.ensure_debian_tree(cache) == tree
    assert len(calls) == 1
    assert calls[0].parent.name.startswith(".build-"), "debootstrap writes to a build dir"
    assert tree.cache.name == f"debian-bookworm-{debian.recipe_key()}"
    assert tree.recipe["prepare"] == debian.PREPARE_VERSION
    assert sorted(p.name for p in cache.iterdir()) == [".lock", tree.cache.name]

    root = tree.rootfs
    system = root / "etc/systemd/system"
    for unit in basetree.MASKED_UNITS:
        assert (system / unit).readlink() == Path("/dev/null")
    assert not (system / "timers.target.wants/apt-daily.timer").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert not (root / "etc/hostname").exists()
    assert (root / "etc/shadow").read_text().splitlines()[0] == "root::20000:0:99999:7:::"
    assert sorted(p.name for p in (root / "var/lib/apt/lists").iterdir()) == ["lock", "partial"]
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert not (root / "var/cache/apt/archives/systemd_252.deb").exists()
    assert (root / "var/log/apt/term.log").read_text() == ""


def test_an_interrupted_build_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(target: Path) -> None:
        fake_debootstrap(target)
        raise KeyboardInterrupt

    monkeypatch.setattr(debian, "_debootstrap", interrupted)
    with pytest.raises(KeyboardInterrupt):
        debian.ensure_debian_tree(cache)
    assert [p.name for p in cache.iterdir()] == [".lock"]


def test_a_stale_build_is_removed_by_the_next(cache: Path, calls: list[Path]) -> None:
    stale = cache / ".build-deadbeef"
    fake_debootstrap(stale / "rootfs")
    tree = debian.ensure_debian_tree(cache)
    assert not stale.exists()
    assert sorted(p.name for p in cache.iterdir()) == [".lock", tree.cache.name]


def test_the_cache_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_TEST_CACHE", "/somewhere/else")
    assert debian.cache_root() == Path("/somewhere/else")


@pytest.mark.integration
def test_a_stale_build_with_a_mount_is_unmounted_not_emptied(
    cache: Path, tmp_path: Path, calls: list[Path]
) -> None:
    # A debootstrap killed in its second stage leaves /proc mounted in the target;
    # removing the build must unmount it, not delete through it.
    if os.geteuid() != 0:
        missing("bind mounts need root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me\n")
    point = cache / ".build-deadbeef" / "rootfs" / "proc"
    point.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(point)], check=True)
    try:
        assert debian.mounts_under(cache) == [point]
        debian.ensure_debian_tree(cache)
    finally:
        if debian.mounts_under(point):
            subprocess.run(["umount", "--lazy", str(point)], check=False)
    assert not point.exists()
    assert debian.mounts_under(cache) == []
    assert (outside / "precious").read_text() == "keep me\n"
