"""Whatever staging accepts can be finalized; a finalization that fails anyway
drops the staged deployment, boots the previous one and says why in status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.store import Store
from helpers.device import booted_version, installed_device, run, status
from helpers.osimage import FileSpec, build_os_image


def boots_version(capsys: pytest.CaptureFixture[str], sysroot: Path, version: str) -> None:
    code, _, err = run(capsys, "boot", "--sysroot", str(sysroot))
    assert code == 0, err
    assert booted_version(capsys, sysroot) == version


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path]:
    return installed_device(tmp_path)


def stage_with_damaged_etc(capsys: pytest.CaptureFixture[str], images: Path, sysroot: Path) -> str:
    """Stage image 2, then remove the tree of its /etc from the store (what a
    disk error after staging could do); return that tree's id."""
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    assert code == 0, err
    staged = status(capsys, sysroot)["status"]["staged"]["atoll"]["commit"]
    store = Store.open(sysroot / "atoll" / "store")
    etc = store.lookup(staged, "etc")
    assert etc is not None
    store.object_path(etc.object_id, "tree").unlink()
    return etc.object_id


def symlinked(name: str) -> dict[str, bytes | str | FileSpec | None]:
    """A second layer that replaces /NAME by a symlink."""
    return {name: FileSpec(symlink="usr/" + name)}


@pytest.mark.parametrize("name", ["etc", "var"])
def test_switch_refuses_a_symlinked_etc_or_var(
    installed: tuple[Path, Path], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    images, sysroot = installed
    build_os_image(images, "bad", version="6.6", add=symlinked(name))
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:bad")
    assert code == 49, err
    assert f"/{name} is a symlink, not a directory" in err
    assert status(capsys, sysroot)["status"]["staged"] is None
    boots_version(capsys, sysroot, "1.0")
    # The device still updates.
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    assert code == 0, err
    boots_version(capsys, sysroot, "2.0")


@pytest.mark.parametrize("name", ["etc", "var"])
def test_install_refuses_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "bad", version="6.6", add=symlinked(name))
    sysroot = tmp_path / "sysroot"
    code, _, err = run(
        capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:bad"
    )
    assert code == 49, err
    assert f"/{name} is a symlink, not a directory" in err


def test_switch_refuses_when_the_booted_etc_lost_a_tree_to_a_repair(
    installed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot = installed
    store_dir = sysroot / "atoll" / "store"
    store = Store.open(store_dir)
    booted = status(capsys, sysroot)["status"]["booted"]["atoll"]["commit"]
    etc = store.lookup(booted, "etc")
    assert etc is not None
    tree = store.object_path(etc.object_id, "tree")
    tree.chmod(0o644)
    tree.write_bytes(b"garbage")
    code, _, err = run(capsys, "store", "fsck", "--store", str(store_dir), "--repair")
    assert code == 0, err
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    assert code == 34, err
    assert "/etc of commit" in err and booted in err
    assert status(capsys, sysroot)["status"]["staged"] is None
    boots_version(capsys, sysroot, "1.0")
    # An upgrade to the same image puts back what the repair removed; then the
    # switch goes through.
    code, out, err = run(capsys, "upgrade", "--sysroot", str(sysroot), "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is False and "restored" in json.loads(out)["message"]
    assert not Store.open(store_dir).partial_commits()
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    assert code == 0, err
    boots_version(capsys, sysroot, "2.0")


def test_a_finalize_that_fails_boots_the_old_deployment_and_status_says_why(
    installed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot = installed
    tree = stage_with_damaged_etc(capsys, images, sysroot)
    boots_version(capsys, sysroot, "1.0")
    doc = status(capsys, sysroot)
    assert doc["status"]["staged"] is None
    dropped = doc["status"]["atoll"]["droppedUpdate"]
    assert dropped["version"] == "2.0" and dropped["exitCode"] == 34
    assert tree in dropped["error"]
    code, out, err = run(capsys, "status", "--sysroot", str(sysroot))
    assert code == 0, err
    assert "2.0" in out and "could not be finalized" in out
    # And it boots again, and again.
    boots_version(capsys, sysroot, "1.0")
    code, _, err = run(capsys, "rollback", "--sysroot", str(sysroot))
    assert code == 42, err  # there is still only the one deployment


def test_finalize_command_drops_and_reports(
    installed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot = installed
    stage_with_damaged_etc(capsys, images, sysroot)
    code, _, err = run(capsys, "finalize", "--sysroot", str(sysroot))
    assert code == 34, err
    assert status(capsys, sysroot)["status"]["atoll"]["droppedUpdate"]["version"] == "2.0"
    boots_version(capsys, sysroot, "1.0")
    # A later update that finalizes clears the record.
    build_os_image(images, "3", version="3.0", add={"usr/bin/three": b"3"})
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:3")
    assert code == 0, err
    boots_version(capsys, sysroot, "3.0")
    assert status(capsys, sysroot)["status"]["atoll"]["droppedUpdate"] is None


def test_the_dropped_record_round_trips_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    from atoll.sysroot.dropped import DroppedUpdate, read_dropped
    from atoll.sysroot.layout import Sysroot

    record = DroppedUpdate("default", "c.0", "quay.io/x", None, "sha256:1", "t", "why", 34)
    assert DroppedUpdate.from_json(record.to_json()) == record
    sysroot = Sysroot(tmp_path)
    sysroot.meta.mkdir()
    (sysroot.meta / "dropped.json").write_text(json.dumps({**record.to_json(), "exitCode": "x"}))
    assert read_dropped(sysroot) is None


def test_an_image_without_usr_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "nousr", version="6.6", add={"usr": None})
    sysroot = tmp_path / "sysroot"
    source = f"oci:{images}:nousr"
    args = ("install", "to-filesystem", str(sysroot), "--source", source, "--allow-no-kernel")
    code, _, err = run(capsys, *args)
    assert code == 49, err
    assert "has no /usr" in err
