"""``atoll store ls | fsck | gc`` with human and JSON output, and fsck's exit code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from atoll.cli import store as store_cli
from atoll.cli.common import Output, add_global_options
from atoll.cli.main import main
from atoll.cli.parser import build_parser
from atoll.errors import AtollError
from atoll.store import Store
from helpers.stores import import_image
from helpers.treeimage import build_tree_image


def _main_has_store() -> bool:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "store" in action.choices
    return False


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``atoll ARGV``: through main() once it registers ``store``; until then
    through a parser with only ``store``, handling errors as main() does."""
    if _main_has_store():
        code = main(list(argv))
    else:
        parser = argparse.ArgumentParser(prog="atoll")
        add_global_options(parser)
        store_cli.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(list(argv))
        out = Output.from_args(args)
        try:
            code = args.func(args, out)
        except AtollError as err:
            out.error(err)
            code = err.exit_code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Store, str, Path]:
    store = Store.create(tmp_path / "store")
    image = build_tree_image(
        tmp_path / "img",
        [{"usr/bin/tool": b"tool", "etc/conf": b"c"}],
        labels={"org.opencontainers.image.version": "3.1"},
    )
    commit = import_image(store, image, ref="images/default").commit_id
    deploy = tmp_path / "deploy"
    store.checkout(commit, deploy)
    return store, commit, deploy


def test_ls(capsys: pytest.CaptureFixture[str], populated: tuple[Store, str, Path]) -> None:
    store, commit, _ = populated
    code, out, _ = run(capsys, "store", "ls", "--store", str(store.path))
    assert code == 0
    assert commit[:12] in out and "images/default" in out and "3.1" in out
    code, out, _ = run(capsys, "store", "ls", "--store", str(store.path), "--json")
    (item,) = json.loads(out)
    assert item["id"] == commit and item["refs"] == ["images/default"] and item["version"] == "3.1"


def test_fsck_exit_codes_and_repair(
    capsys: pytest.CaptureFixture[str], populated: tuple[Store, str, Path]
) -> None:
    store, commit, deploy = populated
    code, out, _ = run(capsys, "store", "fsck", "--store", str(store.path))
    assert code == 0 and "no problems" in out
    (deploy / "usr/bin/tool").chmod(0o777)
    code, out, err = run(capsys, "store", "fsck", "--store", str(store.path), "--json")
    assert code == 34
    report = json.loads(out)
    assert not report["ok"] and report["commitsAffected"] == [commit]
    assert err.startswith("atoll: error: the object store") and "hint: " in err
    code, out, _ = run(capsys, "store", "fsck", "--store", str(store.path), "--repair")
    assert code == 0 and "repaired: removed 1 objects" in out and commit[:12] in out
    code, out, _ = run(capsys, "store", "fsck", "--store", str(store.path))
    assert code == 0


def test_gc(capsys: pytest.CaptureFixture[str], populated: tuple[Store, str, Path]) -> None:
    store, _, _ = populated
    code, out, _ = run(capsys, "store", "gc", "--store", str(store.path), "--json")
    assert code == 0 and json.loads(out)["objectsRemoved"] == 0
    store.set_ref("images/default", None)
    code, out, _ = run(capsys, "store", "gc", "--store", str(store.path))
    assert code == 0 and "removed 7 objects (1 commits)" in out


def test_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "store", "ls", "--store", str(tmp_path / "none"))
    assert code == 12 and "no object store" in err
    # Without --store, the store of --sysroot (default /sysroot), as every command reads it.
    code, _, err = run(capsys, "store", "ls")
    assert code == 12 and "/sysroot/atoll/store" in err
    code, _, err = run(capsys, "store", "ls", "--sysroot", str(tmp_path / "none"))
    assert code == 12 and f"{tmp_path / 'none'}/atoll/store" in err
    code, _, err = run(capsys, "store", "ls", "--store", str(tmp_path), "--sysroot", "/sysroot")
    assert code == 2 and "not allowed" in err
