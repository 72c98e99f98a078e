"""A registry that serves stale content (TUF's rollback and freeze attacks): a
device that follows a tag refuses an older, validly signed image, and with
``max_signature_age`` an image whose signatures grew old, until the signer
refreshes them (real registry, real signatures, the ``atoll`` command)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import KeyPair, generate_key_pair, load_private_key
from atoll.pipeline.sigstore import sign_image
from atoll.sysroot.lifecycle import Device
from helpers.osimage import build_os_image
from helpers.registry import RegistryView

from .test_policy_enforced import push, run, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = 86400


def device_on_v1(
    registry: RegistryView,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    updates_toml: str,
) -> tuple[Path, Path, str, KeyPair]:
    """A directory device installed from REF (a tag, v1 signed now) and booted, whose
    booted deployment trusts the signer's key and has *updates_toml*; returns
    (sysroot, the OCI layout with refs 1 and 2, REF, the signer's keys)."""
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    build_os_image(layout, "2", version="2.0", add={"usr/bin/strace": b"strace"})
    signer = generate_key_pair(tmp_path / "signer")
    ref = f"{registry.host}/{registry.new_repo('os')}:stable"
    push(registry, layout, "1", ref)
    sign_image(ImageReference.parse(ref), load_private_key(signer.private_path), registry.ctx())
    sysroot = tmp_path / "sysroot"
    code, _, err = run(capsys, "install", "to-filesystem", str(sysroot), "--source", ref)
    assert code == 0, err
    assert run(capsys, "boot", "--sysroot", str(sysroot))[0] == 0, "first boot"
    [booted] = [p for p in (sysroot / "atoll/deploy/default/deploy").iterdir() if p.is_dir()]
    policy = {"default": [{"type": "sigstoreSigned", "keyPath": str(signer.public_path)}]}
    (booted / "etc/containers").mkdir(parents=True)
    (booted / "etc/containers/policy.json").write_text(json.dumps(policy))
    (booted / "etc/atoll").mkdir(parents=True, exist_ok=True)
    (booted / "etc/atoll/updates.toml").write_text(updates_toml)
    return sysroot, layout, ref, signer


def booted_etc(sysroot: Path) -> Path:
    state = Device(sysroot).state()
    return state.path(state.booted or state.current) / "etc"


def updates_run(capsys: pytest.CaptureFixture[str], sysroot: Path) -> tuple[int, Any, str]:
    return run(capsys, "updates", "run", "--sysroot", str(sysroot), "--force", "--json")


def test_a_tag_moved_back_to_an_older_signed_image_is_refused(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysroot, layout, ref, signer = device_on_v1(registry, tmp_path, capsys, 'policy = "stage"\n')
    s = ("--sysroot", str(sysroot))
    key = load_private_key(signer.private_path)
    image = ImageReference.parse(ref)

    # v2 is published and signed; the device upgrades to it and boots it.
    push(registry, layout, "2", ref)
    sign_image(image, key, registry.ctx())
    code, out, err = run(capsys, "upgrade", *s, "--json")
    assert code == 0 and out["version"] == "2.0", err
    assert run(capsys, "boot", *s)[0] == 0
    before = snapshot(sysroot)
    assert before[0]["status"]["booted"]["image"]["version"] == "2.0"

    # The registry re-points the tag at v1: old, but validly signed for that tag.
    push(registry, layout, "1", ref)
    assert run(capsys, "verify", f"docker://{ref}", "--key", str(signer.public_path))[0] == 0
    code, _, err = run(capsys, "upgrade", *s)
    assert code == 85, err
    assert "version 1.0, older than the device's 2.0" in err
    assert snapshot(sysroot) == before
    code, _, err = updates_run(capsys, sysroot)
    assert code == 85, err
    assert snapshot(sysroot) == before

    # Going back on purpose: allow_downgrade in updates.toml, --allow-downgrade once,
    # or by naming the image.
    toml = booted_etc(sysroot) / "atoll/updates.toml"
    toml.write_text('policy = "stage"\n[trust]\nallow_downgrade = true\n')
    code, out, err = updates_run(capsys, sysroot)
    assert code == 0, err
    assert out["outcome"] == "staged" and out["version"] == "1.0"
    toml.write_text('policy = "stage"\n')
    build_os_image(layout, "1.5", version="1.5", add={"usr/bin/other": b"other"})
    push(registry, layout, "1.5", ref)
    sign_image(image, key, registry.ctx())
    code, _, err = run(capsys, "upgrade", *s)
    assert code == 85, err  # newer than the staged 1.0, older than the booted 2.0
    code, out, err = run(capsys, "upgrade", *s, "--allow-downgrade", "--json")
    assert code == 0, err
    assert out["message"] == "staged" and out["version"] == "1.5"
    push(registry, layout, "1", f"{image.name}:1.0")
    sign_image(ImageReference.parse(f"{image.name}:1.0"), key, registry.ctx())
    code, out, err = run(capsys, "switch", *s, f"{image.name}:1.0", "--json")
    assert code == 0, err
    assert out["message"] == "staged" and out["version"] == "1.0"


def test_a_frozen_registry_is_refused_until_the_signer_refreshes(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = 'policy = "stage"\n[trust]\nmax_signature_age = "7d"\n'
    sysroot, layout, ref, signer = device_on_v1(registry, tmp_path, capsys, toml)
    s = ("--sysroot", str(sysroot))
    before = snapshot(sysroot)

    # Automatic updates apply the booted deployment's trust policy: v2 unsigned.
    push(registry, layout, "2", ref)
    code, _, err = updates_run(capsys, sysroot)
    assert code == 60, err
    assert snapshot(sysroot) == before

    # v2, whose last signature was made eight days ago: the registry (or a mirror
    # of it) has served the same content since.
    eight_days_ago = int(time.time()) - 8 * DAY
    sign_image(
        ImageReference.parse(ref),
        load_private_key(signer.private_path),
        registry.ctx(),
        timestamp=eight_days_ago,
    )
    for command in (("upgrade", *s), ("switch", *s, ref)):
        code, _, err = run(capsys, *command)
        assert code == 99, (command, err)
        assert "more than max_signature_age (7d)" in err and "atoll sign --refresh" in err
        assert snapshot(sysroot) == before
    code, _, err = updates_run(capsys, sysroot)
    assert code == 99, err
    assert snapshot(sysroot) == before

    # The signer's scheduled refresh re-signs the promoted digest: devices take it.
    code, _, err = run(
        capsys, "sign", "--refresh", f"docker://{ref}", "--key", str(signer.private_path)
    )
    assert code == 0, err
    code, out, err = updates_run(capsys, sysroot)
    assert code == 0, err
    assert out["outcome"] == "staged" and out["version"] == "2.0"
