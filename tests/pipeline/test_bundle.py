"""Offline bundles: create a signed delta bundle with a bound image from a real
registry, then apply it to a directory device with networking disabled."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import generate_key_pair, load_private_key
from atoll.pipeline.sigstore import sign_image
from atoll.pipeline.tarsplit import tar_split
from atoll.podman import isolated_environment
from atoll.store import Store
from helpers.osimage import KVER
from helpers.registry import RegistryView
from helpers.treeimage import build_tree_image, make_tar, symlink

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = {
    "usr/lib/os-release": 'NAME="atoll test"\n',
    f"usr/lib/modules/{KVER}/vmlinuz": b"KERNEL",
    f"usr/lib/modules/{KVER}/initramfs.img": b"INITRAMFS",
    "usr/bin/tool": b"#!/bin/sh\necho tool\n",
    "usr/share/doc/readme": "shared by every version\n" * 100,
    "etc/hostname": "device\n",
    "usr/bin/tool-link": symlink("tool"),
}
LABELS = {"containers.bootc": "1"}
#: A layer both versions have, of which v1's last layer changes a file.
MIDDLE = {"usr/share/middle.txt": "middle, as built\n", "usr/share/kept.txt": "kept\n"}


def atoll_offline(*args: str) -> subprocess.CompletedProcess[str]:
    """``atoll ARGS`` in a network namespace of its own: no interface is up, so no
    registry (not even the loopback one the test uses) can be reached."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode:
        pytest.skip("unshare -n does not work here: cannot take the network away")
    return subprocess.run(
        [unshare, "-n", sys.executable, "-m", "atoll", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in args and code == 0 else captured.out
    return code, out, captured.err


def test_tar_split_rebuilds_the_layer_byte_for_byte(tmp_path: Path) -> None:
    import base64
    import io

    tar = make_tar({**BASE, "usr/share/long/" + "n" * 120: b"long name, pax header"})
    segments, size = tar_split(io.BytesIO(tar))
    assert size == len(tar)
    files = {s[1]: s for s in segments if s[0] == "file"}
    assert files["usr/bin/tool"][2] == len(b"#!/bin/sh\necho tool\n")
    # Raw segments hold no file content; put the contents back and get the tar.
    contents = {"usr/share/long/" + "n" * 120: b"long name, pax header"}
    for name, value in BASE.items():
        if isinstance(value, (bytes, str)):
            contents[name] = value.encode() if isinstance(value, str) else value
    rebuilt = b"".join(
        base64.b64decode(s[1]) if s[0] == "raw" else contents[s[1]] for s in segments
    )
    assert rebuilt == tar
    assert b"shared by every version" not in b"".join(
        base64.b64decode(s[1]) for s in segments if s[0] == "raw"
    )


def test_delta_bundle_applies_offline_and_tampering_is_refused(
    registry: RegistryView,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bound image goes into a podman storage of this test's own.
    podman_env = isolated_environment(
        tmp_path / "podman", registries_conf=Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    )
    for name, value in podman_env.items():
        monkeypatch.setenv(name, value)
    host = registry.host
    signer = generate_key_pair(tmp_path / "signer")
    stranger = generate_key_pair(tmp_path / "stranger")
    key = load_private_key(signer.private_path)
    ctx = registry.ctx()

    # A workload image the OS binds.
    app_repo = registry.new_repo("app")
    registry.push_test_image(app_repo, "1", seed="app")
    app_ref = f"{host}/{app_repo}:1"
    sign_image(ImageReference.parse(app_ref), key, ctx)

    # v1 = BASE + MIDDLE + TOP1 (which changes a file of MIDDLE);
    # v2 = BASE + MIDDLE + TOP2 (a new tool, and the bound image).
    os_repo = registry.new_repo("os")
    layout = tmp_path / "images"
    top1 = {"usr/share/middle.txt": "changed by v1\n", "usr/bin/v1-only": b"v1"}
    top2 = {
        "usr/bin/strace": b"\x7fELF strace",
        "usr/share/containers/systemd/app.image": f"[Image]\nImage={app_ref}\n",
        "usr/lib/bootc/bound-images.d/app.image": symlink(
            "/usr/share/containers/systemd/app.image"
        ),
    }
    for tag, top, version in (("1", top1, "1.0"), ("2", top2, "2.0")):
        build_tree_image(
            layout,
            [BASE, MIDDLE, top],
            ref=tag,
            labels={"org.opencontainers.image.version": version, "containers.bootc": "1"},
        )
        ref = f"{host}/{os_repo}:{tag}"
        registry.skopeo(
            "copy", "-q", *registry.skopeo_args("dest"), f"oci:{layout}:{tag}", f"docker://{ref}"
        )
        sign_image(ImageReference.parse(ref), key, ctx)
    v1, v2 = f"{host}/{os_repo}:1", f"{host}/{os_repo}:2"

    # The device runs v1; its policy trusts the signer for this registry only.
    sysroot = tmp_path / "sysroot"
    assert run(capsys, "install", "to-filesystem", str(sysroot), "--source", v1)[0] == 0
    assert run(capsys, "boot", "--sysroot", str(sysroot))[0] == 0
    [booted] = [p for p in (sysroot / "atoll/deploy/default/deploy").iterdir() if p.is_dir()]
    (booted / "etc/containers").mkdir(parents=True)
    policy = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {host: [{"type": "sigstoreSigned", "keyPath": str(signer.public_path)}]}
        },
    }
    (booted / "etc/containers/policy.json").write_text(json.dumps(policy))

    bundle = tmp_path / "v2.bundle"
    code, created, err = run(
        capsys,
        "bundle", "create", f"docker://{v2}", "--from", f"docker://{v1}",
        "--with-bound-images", "--key", str(signer.private_path), "-o", str(bundle), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert created["signed"] is True
    roles = {i["reference"]: i["role"] for i in created["images"]}
    assert roles == {v2: "os", app_ref: "bound"}
    assert all(i["signatures"] for i in created["images"])
    # BASE is left out (v1 has it unchanged); MIDDLE travels (v1 changed a file of it).
    [omitted] = created["delta"]["omitted"]
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert f"blobs/sha256/{omitted['digest'].split(':')[1]}" not in names
    code, inspected, _ = run(capsys, "bundle", "inspect", str(bundle), "--json")
    assert code == 0 and inspected["bundleDigest"] == created["bundleDigest"]

    commits_before = sorted(Store.open(sysroot / "atoll/store").commit_ids())

    def nothing_staged() -> None:
        assert not (sysroot / "atoll/staged.json").exists()
        assert sorted(Store.open(sysroot / "atoll/store").commit_ids()) == commits_before

    # Signed with a key the device does not trust for bundles.
    proc = atoll_offline(
        "bundle",
        "apply",
        str(bundle),
        "--sysroot",
        str(sysroot),
        "--key",
        str(stranger.public_path),
    )
    assert proc.returncode == 87, proc.stderr
    nothing_staged()

    # A byte of a blob changed inside the file.
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(bundle.read_bytes())
    with tarfile.open(bundle) as tar:
        member = max(
            (m for m in tar.getmembers() if m.name.startswith("blobs/")), key=lambda m: m.size
        )
    data[member.offset_data + member.size // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    proc = atoll_offline("bundle", "apply", str(tampered), "--sysroot", str(sysroot))
    assert proc.returncode == 86, proc.stderr
    assert f"blob {member.name.replace('blobs/sha256/', 'sha256:')} does not match" in proc.stderr
    nothing_staged()

    # The genuine bundle, with no network at all.
    proc = atoll_offline("bundle", "apply", str(bundle), "--sysroot", str(sysroot), "--json")
    assert proc.returncode == 0, proc.stderr
    applied = json.loads(proc.stdout)
    assert applied["bundle"]["signature"] == "verified"
    assert [t["requirement"] for t in applied["bundle"]["trust"]] == ["sigstoreSigned"] * 2
    assert applied["message"] == "staged" and applied["version"] == "2.0"
    assert len(applied["boundImages"]) == 1
    # Staging put the bound image into podman's storage from the bundle: no network.
    exists = subprocess.run(["podman", "image", "exists", app_ref], check=False)
    assert exists.returncode == 0

    assert run(capsys, "boot", "--sysroot", str(sysroot))[0] == 0
    code, doc, _ = run(capsys, "status", "--sysroot", str(sysroot), "--json")
    booted_doc = doc["status"]["booted"]
    assert booted_doc["image"]["version"] == "2.0"
    assert booted_doc["image"]["image"]["image"] == v2  # later online upgrades use the registry
    commit = booted_doc["atoll"]["commit"]
    root = (
        sysroot / "atoll/deploy/default/deploy" / f"{commit}.{booted_doc['atoll']['deploySerial']}"
    )
    assert (root / "usr/bin/strace").read_bytes() == b"\x7fELF strace"
    assert (root / "usr/share/doc/readme").read_text() == "shared by every version\n" * 100
    assert (root / "usr/share/middle.txt").read_text() == "middle, as built\n"
    assert not (root / "usr/bin/v1-only").exists()
    # The same image pulled from the registry gives the same commit tree.
    store = Store.open(sysroot / "atoll/store")
    assert store.commit(commit).manifest_digest == created["images"][0]["digest"]


def push_a_and_b(registry: RegistryView, layout: Path) -> str:
    """Images ``a`` and ``b`` (BASE and one file each) in *layout* and in a new
    repository of *registry*; return the repository."""
    repo = registry.new_repo("os")
    for tag, extra in (("a", {"usr/bin/a": b"a"}), ("b", {"usr/bin/b": b"b"})):
        build_tree_image(layout, [BASE, extra], ref=tag, labels=LABELS)
        registry.skopeo(
            "copy", "-q", *registry.skopeo_args("dest"), f"oci:{layout}:{tag}",
            f"docker://{registry.host}/{repo}:{tag}",
        )  # fmt: skip
    return repo


def test_delta_from_an_image_the_device_lacks_is_refused(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = push_a_and_b(registry, tmp_path / "images")
    sysroot = tmp_path / "s"
    other = tmp_path / "other"
    build_tree_image(other, [{**BASE, "usr/bin/c": b"c"}], ref="c", labels=LABELS)
    assert (
        run(capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{other}:c")[0] == 0
    )
    bundle = tmp_path / "b.bundle"
    code, _, err = run(
        capsys, "bundle", "create", f"docker://{registry.host}/{repo}:b",
        "--from", f"docker://{registry.host}/{repo}:a", "-o", str(bundle),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "bundle", "apply", str(bundle), "--sysroot", str(sysroot))
    assert code == 86, err
    assert "does not hold" in err
    assert not (sysroot / "atoll/staged.json").exists()


def test_every_blob_is_checked_and_a_damaged_tar_says_so(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no policy nothing asks for the signatures: their blobs are checked all
    the same, as is a blob no manifest names; a damaged tar header is named as such."""
    layout = tmp_path / "images"
    repo = push_a_and_b(registry, layout)
    b_ref = ImageReference.parse(f"{registry.host}/{repo}:b")
    sign_image(
        b_ref, load_private_key(generate_key_pair(tmp_path / "k").private_path), registry.ctx()
    )
    sysroot = tmp_path / "s"
    code, _, err = run(
        capsys, "install", "to-filesystem", str(sysroot), "--source", f"oci:{layout}:a"
    )
    assert code == 0, err
    bundle = tmp_path / "b.bundle"
    code, created, err = run(
        capsys, "bundle", "create", f"docker://{b_ref}", "-o", str(bundle), "--json"
    )
    assert code == 0, err
    [image] = created["images"]
    assert image["signatures"]

    def member_of(digest: str) -> tarfile.TarInfo:
        with tarfile.open(bundle) as tar:
            return tar.getmember("blobs/sha256/" + digest.split(":")[1])

    with tarfile.open(bundle) as tar:
        sig_manifest = json.loads(tar.extractfile(member_of(image["signatures"])).read())  # type: ignore[union-attr]
    payload = member_of(sig_manifest["layers"][0]["digest"])

    def apply(path: Path) -> tuple[int, str]:
        code, _, err = run(capsys, "bundle", "apply", str(path), "--sysroot", str(sysroot))
        assert not (sysroot / "atoll/staged.json").exists() or code == 0
        return code, err

    # A changed byte of the signature payload.
    data = bytearray(bundle.read_bytes())
    data[payload.offset_data] ^= 0x01
    tampered = tmp_path / "payload.bundle"
    tampered.write_bytes(bytes(data))
    code, err = apply(tampered)
    assert code == 86, err
    assert f"blob {sig_manifest['layers'][0]['digest']} does not match its digest" in err

    # A blob nothing names, whose bytes are not what its name says.
    stray = tmp_path / "stray.bundle"
    shutil.copy(bundle, stray)
    with tarfile.open(stray, "a") as tar:
        info = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
        info.size = 5
        tar.addfile(info, io.BytesIO(b"stray"))
    code, err = apply(stray)
    assert code == 86, err
    assert "does not match its digest" in err

    # The checksum of a header after the first.
    with tarfile.open(bundle) as tar:
        second = tar.getmembers()[1]
    data = bytearray(bundle.read_bytes())
    data[second.offset + 148] ^= 0x01
    damaged = tmp_path / "header.bundle"
    damaged.write_bytes(bytes(data))
    code, err = apply(damaged)
    assert code == 86, err
    assert f"tar header at byte {second.offset} is damaged" in err

    code, err = apply(bundle)
    assert code == 0, err
