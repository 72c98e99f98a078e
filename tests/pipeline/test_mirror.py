"""``atoll mirror`` from a staging registry to a production registry (two real servers:
the anonymous one and the one with Basic auth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.oci.client import RegistryClient
from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import generate_key_pair, load_private_key
from atoll.pipeline.sigstore import sign_image
from helpers.registry import RegistryView

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in args and code == 0 else captured.out
    return code, out, captured.err


def test_mirror_copies_only_what_changed_with_signatures(
    registry: RegistryView,
    auth_registry: RegistryView,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stage, prod = registry.new_repo("stage"), auth_registry.new_repo("prod")
    for tag in ("1.0", "1.1", "dev"):
        registry.push_test_image(stage, tag, seed=f"v{tag}")
    signer = generate_key_pair(tmp_path / "signer")
    stage_1_0 = ImageReference.parse(f"{registry.host}/{stage}:1.0")
    sign_image(stage_1_0, load_private_key(signer.private_path), registry.ctx())
    src, dst = f"docker://{registry.host}/{stage}", f"docker://{auth_registry.host}/{prod}"
    creds = ("--dest-creds", str(auth_registry.credentials))

    code, out, err = run(
        capsys, "mirror", src, dst, "--tags", r"^1\.", "--with-signatures", *creds, "--json"
    )
    assert code == 0, err
    assert {t["tag"]: (t["action"], t["signatures"]) for t in out["tags"]} == {
        "1.0": ("copied", "copied"),
        "1.1": ("copied", "none"),
    }
    with RegistryClient(auth_registry.host, auth_registry.ctx()) as client:
        tags = set(client.list_tags(prod))
        digest = client.head_manifest(prod, "1.0").digest
    assert digest is not None
    assert tags == {
        "1.0",
        "1.1",
        f"sha256-{digest.hex}.sig",
    }  # no "dev", no tags of its own for .sig

    # The signature still names the staging image: production's policy maps the name.
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": str(signer.public_path),
                        "signedIdentity": {
                            "type": "remapIdentity",
                            "prefix": f"{auth_registry.host}/{prod}",
                            "signedPrefix": f"{registry.host}/{stage}",
                        },
                    }
                ]
            }
        )
    )
    code, _, err = run(
        capsys,
        "verify",
        f"{dst}:1.0",
        "--policy",
        str(policy),
        "--creds",
        str(auth_registry.credentials),
    )
    assert code == 0, err

    # Nothing changed: nothing is copied.
    code, out, err = run(
        capsys, "mirror", src, dst, "--tags", r"^1\.", "--with-signatures", *creds, "--json"
    )
    assert code == 0, err
    assert out["copied"] == 0 and out["unchanged"] == 2

    # A new 1.1 in staging: only it travels.
    registry.push_test_image(stage, "1.1", seed="v1.1-rebuilt")
    code, out, err = run(capsys, "mirror", src, dst, "--tags", r"^1\.", *creds, "--json")
    assert code == 0, err
    assert {t["tag"]: t["action"] for t in out["tags"]} == {"1.0": "unchanged", "1.1": "copied"}
    with RegistryClient(auth_registry.host, auth_registry.ctx()) as client:
        new = client.head_manifest(prod, "1.1").digest
    with RegistryClient(registry.host, registry.ctx()) as client:
        assert client.head_manifest(stage, "1.1").digest == new


def test_mirror_refuses_a_tag_in_the_repository_names(
    registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "mirror", f"docker://{registry.host}/a:1", f"docker://{registry.host}/b"
    )
    assert code == 4 and "without tag or digest" in err
