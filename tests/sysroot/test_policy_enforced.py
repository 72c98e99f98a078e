"""The device's trust policy: ``atoll upgrade``/``switch``/``install`` refuse what it refuses,
and a refusal stages nothing (real registry, real signatures)."""

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
from atoll.store import Store
from atoll.sysroot.lifecycle import Device
from atoll.sysroot.status import host_document
from helpers.osimage import build_os_image
from helpers.registry import RegistryView

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in args and captured.out else captured.out
    return code, out, captured.err


def snapshot(sysroot: Path) -> tuple[Any, list[str], list[str], bool]:
    """What must not change when an update is refused: the status document, the
    deployments, the store's commits, staged.json."""
    doc = host_document(Device(sysroot).state())
    store = Store.open(sysroot / "atoll/store")
    return (
        doc,
        sorted(p.name for p in (sysroot / "atoll/deploy/default/deploy").iterdir()),
        sorted(store.commit_ids()),
        (sysroot / "atoll/staged.json").exists(),
    )


def push(registry: RegistryView, layout: Path, tag: str, ref: str) -> None:
    registry.skopeo(
        "copy", "-q", *registry.skopeo_args("dest"), f"oci:{layout}:{tag}", f"docker://{ref}"
    )


def test_upgrade_and_switch_enforce_the_booted_deployments_policy(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    build_os_image(layout, "2", version="2.0", add={"usr/bin/strace": b"strace"})
    build_os_image(layout, "3", version="3.0", add={"usr/bin/other": b"other"})
    signer = generate_key_pair(tmp_path / "signer")
    stranger = generate_key_pair(tmp_path / "stranger")
    repo = registry.new_repo("os")
    ref = f"{registry.host}/{repo}:stable"
    image = ImageReference.parse(ref)
    ctx = registry.ctx()
    push(registry, layout, "1", ref)

    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    code, _, err = run(capsys, "install", "to-filesystem", str(sysroot), "--source", ref)
    assert code == 0, err
    assert run(capsys, "boot", *s)[0] == 0
    # The policy lives in the booted deployment's /etc, as bootc reads it.
    [booted] = [p for p in (sysroot / "atoll/deploy/default/deploy").iterdir() if p.is_dir()]
    policy = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                registry.host: [{"type": "sigstoreSigned", "keyPath": str(signer.public_path)}]
            }
        },
    }
    (booted / "etc/containers").mkdir(parents=True)
    (booted / "etc/containers/policy.json").write_text(json.dumps(policy))
    before = snapshot(sysroot)

    # v2, unsigned.
    push(registry, layout, "2", ref)
    code, _, err = run(capsys, "upgrade", *s)
    assert code == 60, err
    assert "requires sigstoreSigned" in err and "not signed" in err
    assert snapshot(sysroot) == before

    # v2, signed by a key the policy does not trust.
    sign_image(image, load_private_key(stranger.private_path), ctx)
    code, _, err = run(capsys, "upgrade", *s)
    assert code == 61, err
    assert snapshot(sysroot) == before

    # A byte of the signed manifest changed, the signature copied along: the
    # signature names the old digest.
    sign_image(image, load_private_key(signer.private_path), ctx)
    with RegistryClient(image.registry, ctx) as client:
        signed = client.get_manifest(image.repository, "stable")
        tampered = signed.raw + b"\n"
        new_digest = client.put_manifest(
            image.repository, "stable", tampered, str(signed.media_type)
        )
        sig = client.get_manifest(image.repository, f"sha256-{signed.digest.hex}.sig")
        client.put_manifest(
            image.repository, f"sha256-{new_digest.hex}.sig", sig.raw, str(sig.media_type)
        )
    code, _, err = run(capsys, "upgrade", *s)
    assert code == 62, err
    assert "signature is for manifest" in err
    assert snapshot(sysroot) == before

    # Another image re-tagged under the signed tag.
    push(registry, layout, "3", ref)
    code, _, err = run(capsys, "upgrade", *s)
    assert code == 60, err
    assert snapshot(sysroot) == before

    # The genuine, signed v2 is admitted and staged.
    push(registry, layout, "2", ref)
    code, out, err = run(capsys, "upgrade", *s, "--json")
    assert code == 0, err
    assert out["message"] == "staged" and out["version"] == "2.0"
    assert out["trust"]["requirement"] == "sigstoreSigned"
    assert (sysroot / "atoll/staged.json").exists()

    # --policy overrides the deployment's file; a scope that rejects refuses a switch.
    reject = tmp_path / "reject.json"
    reject.write_text('{"default": [{"type": "reject"}]}')
    staged_before = (sysroot / "atoll/staged.json").read_bytes()
    code, _, err = run(capsys, "switch", *s, "--policy", str(reject), f"oci:{layout}:3")
    assert code == 64, err
    assert (sysroot / "atoll/staged.json").read_bytes() == staged_before


def test_install_enforces_a_policy_only_when_asked(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    signer = generate_key_pair(tmp_path / "signer")
    repo = registry.new_repo("os")
    ref = f"{registry.host}/{repo}:1"
    push(registry, layout, "1", ref)
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"default": [{"type": "sigstoreSigned", "keyPath": str(signer.public_path)}]})
    )
    sysroot = tmp_path / "refused"
    code, _, err = run(
        capsys, "install", "to-filesystem", str(sysroot), "--source", ref, "--policy", str(policy)
    )
    assert code == 60, err
    assert not sysroot.exists()  # refused before the sysroot was made

    sign_image(ImageReference.parse(ref), load_private_key(signer.private_path), registry.ctx())
    code, out, err = run(
        capsys,
        "install",
        "to-filesystem",
        str(tmp_path / "ok"),
        "--source",
        ref,
        "--policy",
        str(policy),
        "--json",
    )
    assert code == 0, err
    assert out["trust"]["requirement"] == "sigstoreSigned"


def test_switch_refuses_everything_under_a_policy_that_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A booted deployment's policy.json that is a directory, has a duplicated key or
    starts with a byte-order mark refuses every image: it never reads as "no policy"
    nor as its last duplicate."""
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    build_os_image(layout, "2", version="2.0", add={"usr/bin/strace": b"strace"})
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    code, _, err = run(
        capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{layout}:1"
    )
    assert code == 0, err
    assert run(capsys, "boot", *s)[0] == 0
    [booted] = [p for p in (sysroot / "atoll/deploy/default/deploy").iterdir() if p.is_dir()]
    policy = booted / "etc/containers/policy.json"
    policy.parent.mkdir(parents=True)
    before = snapshot(sysroot)
    accept = b'[{"type": "insecureAcceptAnything"}]'
    for hostile in (
        b'{"default": [{"type": "reject"}], "default": ' + accept + b"}",
        b'{"default": [{"type": "reject", "type": "insecureAcceptAnything"}]}',
        b'\xef\xbb\xbf{"default": ' + accept + b"}",
        None,  # a directory
    ):
        if hostile is None:
            policy.unlink()
            policy.mkdir()
        else:
            policy.write_bytes(hostile)
        code, _, err = run(capsys, "switch", *s, f"oci:{layout}:2")
        assert code == 65, (hostile, err)
        assert "policy.json" in err
        assert snapshot(sysroot) == before
