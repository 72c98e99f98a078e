"""``atoll promote`` against a real registry: semver tags, rollback protection, records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.oci.client import RegistryClient
from atoll.oci.digest import Digest
from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import generate_key_pair, load_private_key
from atoll.pipeline.promote import compare_versions, read_promotions
from atoll.pipeline.sigstore import sign_image
from helpers.registry import RegistryView


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in args and code == 0 else captured.out
    return code, out, captured.err


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.2.3", "1.2.10"),
        ("1.9.9", "2"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.beta", "1.0.0-beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("v1.2", "1.2.1"),
    ],
)
def test_semantic_versions_compare_as_semver_says(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert compare_versions(older, older) == 0


def test_a_label_that_is_no_version_does_not_compare() -> None:
    assert compare_versions("nightly", "1.0") is None


def tags_of(registry: RegistryView, repo: str) -> dict[str, str]:
    with RegistryClient(registry.host, registry.ctx()) as client:
        return {
            t: str(client.head_manifest(repo, t).digest)
            for t in client.list_tags(repo)
            if not t.startswith("sha256-")
        }


@pytest.mark.integration
def test_promote_moves_semver_tags_and_refuses_a_downgrade(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    stage, prod = registry.new_repo("stage"), registry.new_repo("prod")
    signer = generate_key_pair(tmp_path / "signer")
    digests = {}
    for version in ("1.2.3", "1.3.0", "1.3.1"):
        image = registry.push_test_image(
            stage, version, seed=version, labels={"org.opencontainers.image.version": version}
        )
        digests[version] = image.manifest_digest
    key = load_private_key(signer.private_path)
    for version in ("1.2.3", "1.3.0"):
        sign_image(ImageReference.parse(f"{host}/{stage}:{version}"), key, registry.ctx())
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"default": [{"type": "sigstoreSigned", "keyPath": str(signer.public_path)}]})
    )
    to = ("--to", f"docker://{host}/{prod}")

    code, out, err = run(
        capsys, "promote", f"docker://{host}/{stage}@{digests['1.3.0']}", *to,
        "--tags", "1.3.0,1.3,1,stable", "--policy", str(policy), "--by", "ci@build", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert [t["action"] for t in out["tags"]] == ["created"] * 4
    assert out["signatures"] == "copied" and out["trust"]["requirement"] == "sigstoreSigned"
    assert tags_of(registry, prod) == dict.fromkeys(
        ["1.3.0", "1.3", "1", "stable"], digests["1.3.0"]
    )

    # An older version may not take the moving tags.
    code, _, err = run(
        capsys, "promote", f"docker://{host}/{stage}@{digests['1.2.3']}", *to,
        "--tags", "1.2.3,1.2,1,stable",
    )  # fmt: skip
    assert code == 85, err
    assert f"{host}/{prod}:1 is at version 1.3.0" in err
    assert tags_of(registry, prod) == dict.fromkeys(
        ["1.3.0", "1.3", "1", "stable"], digests["1.3.0"]
    )

    # Unless on purpose: a rollback of the fleet.
    code, out, err = run(
        capsys, "promote", f"docker://{host}/{stage}@{digests['1.2.3']}", *to,
        "--tags", "1.2.3,1.2,1,stable", "--allow-downgrade", "--by", "oncall", "--json",
    )  # fmt: skip
    assert code == 0, err
    moves = {t["tag"]: t for t in out["tags"]}
    assert moves["stable"]["action"] == "moved" and moves["stable"]["previousVersion"] == "1.3.0"
    assert moves["1.2"]["action"] == "created"
    assert tags_of(registry, prod)["stable"] == digests["1.2.3"]

    # An unsigned image is refused by the policy before anything is copied.
    code, _, err = run(
        capsys, "promote", f"docker://{host}/{stage}@{digests['1.3.1']}", *to,
        "--tags", "1.3.1", "--policy", str(policy),
    )  # fmt: skip
    assert code == 60, err
    assert "1.3.1" not in tags_of(registry, prod)
    with RegistryClient(host, registry.ctx()) as client:
        assert not client.blob_exists(prod, Digest.parse(digests["1.3.1"]))

    # A tag, not a digest, is refused: promotion is of exact bytes.
    code, _, err = run(capsys, "promote", f"docker://{host}/{stage}:1.3.0", *to, "--tags", "x")
    assert code == 4 and "by digest" in err

    # Each promotion is recorded beside the image.
    records = read_promotions(
        ImageReference.parse(f"{host}/{prod}"), Digest.parse(digests["1.2.3"]), registry.ctx()
    )
    assert [(r["by"], r["tags"]) for r in records] == [("oncall", ["1.2.3", "1.2", "1", "stable"])]
    assert records[0]["previous"]["stable"] == digests["1.3.0"]
    [first] = read_promotions(
        ImageReference.parse(f"{host}/{prod}"), Digest.parse(digests["1.3.0"]), registry.ctx()
    )
    assert first["by"] == "ci@build" and first["source"] == f"{host}/{stage}@{digests['1.3.0']}"
