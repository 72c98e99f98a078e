"""Every deployment is a root of the store: gc never removes a deployment's
commit, whether it runs through the sysroot or on the store directly, and
fsck reports a deployment whose commit is missing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from atoll.cli.main import main
from atoll.store import Store
from atoll.sysroot.layout import Sysroot
from helpers.device import booted_version, installed_device, run


@pytest.fixture
def device(tmp_path: Path) -> tuple[Path, Path]:
    return installed_device(tmp_path)


def deployment_commits(sysroot: Path) -> set[str]:
    deploy = Sysroot(sysroot).deploy_dir("default")
    return {p.name.split(".")[0] for p in deploy.glob("*.origin")}


def test_gc_on_the_store_path_keeps_every_deployment(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, sysroot = device
    store = str(sysroot / "atoll" / "store")
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    assert code == 0, err
    # Booted (1.0) and staged (2.0): both are roots.
    code, out, err = run(capsys, "store", "gc", "--store", store, "--json")
    assert code == 0, err
    assert json.loads(out)["commitsKept"] == 2
    code, out, err = run(capsys, "store", "fsck", "--store", store, "--json")
    assert code == 0, err
    assert json.loads(out)["objectsChecked"] > 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    assert booted_version(capsys, sysroot) == "2.0"
    # The rollback deployment (1.0) is a root as well.
    code, out, err = run(capsys, "store", "gc", "--store", store, "--json")
    assert code == 0, err
    assert json.loads(out)["commitsKept"] == 2
    assert main(["rollback", "--sysroot", str(sysroot)]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    assert booted_version(capsys, sysroot) == "1.0"


def test_library_gc_on_the_bare_store_keeps_every_deployment(device: tuple[Path, Path]) -> None:
    _, sysroot = device
    report = Store.open(sysroot / "atoll" / "store").gc()
    assert report.commits_kept == 1
    store = Store.open(sysroot / "atoll" / "store")
    assert deployment_commits(sysroot) <= set(store.commit_ids())


def test_a_sysroot_without_deployment_refs_gets_them(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sysroot written before deployments were refs: gc on its store path
    still keeps the booted commit."""
    _, sysroot = device
    store_dir = sysroot / "atoll" / "store"
    for ref in Store.open(store_dir).refs():
        Store.open(store_dir).set_ref(ref, None)
    assert Store.open(store_dir).refs() == {}
    code, out, err = run(capsys, "store", "gc", "--store", str(store_dir), "--json")
    assert code == 0, err
    assert json.loads(out)["commitsKept"] == 1
    assert deployment_commits(sysroot) <= set(Store.open(store_dir).commit_ids())
    assert len(Store.open(store_dir).refs()) == 1


@pytest.mark.parametrize("refs", [True, False], ids=["with-refs", "made-before-refs"])
def test_fsck_names_a_deployment_whose_commit_is_missing(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str], refs: bool
) -> None:
    _, sysroot = device
    store_dir = sysroot / "atoll" / "store"
    store = Store.open(store_dir)
    if not refs:
        for ref in store.refs():
            store.set_ref(ref, None)
    (commit,) = deployment_commits(sysroot)
    store.object_path(commit, "commit").unlink()
    code, out, err = run(capsys, "store", "fsck", "--store", str(store_dir), "--json")
    assert code == 34, err
    problems = json.loads(out)["problems"]
    assert any(commit[:12] in p["object"] or commit in p["message"] for p in problems)
    (problem,) = [p for p in problems if p["kind"] == "deployment"]
    assert problem["message"].startswith(f"deployment default/{commit}.0 ")
    assert commit in problem["message"]


def test_gc_waiting_for_an_import_does_not_remove_it(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc that starts while a switch imports (and waits for the store lock)
    must not remove what the switch imported before it checks it out."""
    from atoll.store import importer

    images, sysroot = device
    store_dir = sysroot / "atoll" / "store"
    gc_done = threading.Event()
    gc_result: list[object] = []
    real = importer.import_image

    def import_then_gc(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]

        def collect() -> None:
            # Another process in real life: a thread has its own lock slot.
            gc_result.append(Store.open(store_dir).gc())
            gc_done.set()

        threading.Thread(target=collect, daemon=True).start()
        # Give the gc every chance to run before the switch goes on.
        gc_done.wait(timeout=5)
        return result

    # Store.import_image is the importer's function (the store passes itself).
    monkeypatch.setattr(Store, "import_image", import_then_gc)
    code, _, err = run(capsys, "switch", "--sysroot", str(sysroot), f"oci:{images}:2")
    gc_done.wait(timeout=60)
    assert code == 0, err
    assert gc_result
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    assert booted_version(capsys, sysroot) == "2.0"
