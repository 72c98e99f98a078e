"""``atoll image sync`` against the real registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.cli.main import main
from helpers.registry import RegistryView

pytestmark = pytest.mark.integration


def test_sync_every_tag_of_a_repository(
    registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = registry.new_repo("sync")
    pushed = {tag: registry.push_test_image(repo, tag, seed=tag) for tag in ("1.0", "1.1")}
    prefix = registry.new_repo("mirror")
    dest = f"docker://{registry.host}/{prefix}"
    assert main(["image", "sync", "--json", f"docker://{registry.host}/{repo}", dest]) == 0
    outcomes = json.loads(capsys.readouterr().out)
    assert [o["exitCode"] for o in outcomes] == [0, 0]
    last = repo.rsplit("/", 1)[1]
    for tag, image in pushed.items():
        copied = f"docker://{registry.host}/{prefix}/{last}:{tag}"
        assert main(["image", "inspect", "--json", "--no-tags", copied]) == 0
        assert json.loads(capsys.readouterr().out)["Digest"] == image.manifest_digest


def test_sync_from_yaml_with_regex_and_dry_run(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = registry.new_repo("yaml")
    for tag in ("2.0", "2.1", "3.0"):
        registry.push_test_image(repo, tag, seed=tag)
    spec = tmp_path / "sync.yaml"
    spec.write_text(
        f"{registry.host}:\n  tls-verify: false\n  images-by-tag-regex:\n    {repo}: '^2\\.'\n"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["image", "sync", "--dry-run", "--json", str(spec), f"dir:{out_dir}"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sorted(p["source"].rsplit(":", 1)[1] for p in plan) == ["2.0", "2.1"]
    assert list(out_dir.iterdir()) == []
    assert main(["image", "sync", str(spec), f"dir:{out_dir}"]) == 0
    assert "2 of 2 images synced" in capsys.readouterr().out
    last = repo.rsplit("/", 1)[1]
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{last}:2.0", f"{last}:2.1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reg:\n  imagez: {}\n", "unknown key 'imagez'"),
        ("reg:\n  images: [a]\n", "images: expected a mapping"),
        ("reg:\n  tls-verify: maybe\n", "tls-verify: expected true or false"),
        ("reg:\n  images-by-tag-regex: {a: '('}\n", "bad regular expression"),
        ("reg: [\n", "line"),
    ],
)
def test_bad_sync_files_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    assert main(["image", "sync", str(spec), f"dir:{tmp_path}"]) == 4
    err = capsys.readouterr().err.splitlines()[0]
    assert str(spec) in err
    assert message in err


def test_readme_sync_example_names_the_destination_sync_uses() -> None:
    from atoll.oci.reference import ImageReference
    from atoll.oci.sync import _destination

    readme = Path(__file__).parents[2] / "README.md"
    line = next(
        ln for ln in readme.read_text().splitlines() if ln.startswith("atoll image sync docker://")
    )
    command, _, comment = line.partition("#")
    src, dst = command.split()[3:5]
    promised = comment.strip().removeprefix("to ")
    ref = ImageReference.parse(src.removeprefix("docker://") + ":TAG")
    assert str(_destination(ref, dst, scoped=False)) == f"docker://{promised}"
