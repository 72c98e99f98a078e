"""Bundles made ``--delta-from``: per-file deltas and the missing files of
zstd:chunked layers, applied offline to a device running OLD, checked as an
upgrade from the registry checks them; and the device's trust settings."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.manifest import Compression
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, open_source
from atoll.pipeline.keys import generate_key_pair, load_private_key
from atoll.pipeline.sigstore import sign_image
from helpers.osimage import KVER
from helpers.registry import RegistryView
from helpers.treeimage import Node, build_tree_image
from pipeline.test_bundle import atoll_offline, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHUNKED = CopyOptions(dest_compression=Compression.ZSTD, zstd_chunked=True)


def _daemon(version: str) -> bytes:
    data = bytearray(random.Random("daemon").randbytes(400_000))
    data[200_000:200_012] = f"build {version:>6}".encode()[:12]
    return bytes(data)


def layers(version: str) -> list[dict[str, Any]]:
    """Three layers: libraries both versions share; the base, whose daemon
    changes by a few bytes (a patch) and whose data file is rewritten (its
    frames); a top layer all new in v2 (whole)."""
    libs = {f"usr/lib/lib{i}.so": random.Random(i).randbytes(40_000) for i in range(8)}
    base = {
        "usr/lib/os-release": f'NAME="atoll test"\nVERSION_ID={version}\n',
        f"usr/lib/modules/{KVER}/vmlinuz": b"KERNEL",
        f"usr/lib/modules/{KVER}/initramfs.img": b"INITRAMFS",
        "etc/hostname": "device\n",
        "usr/sbin/daemon": Node(content=_daemon(version), mode=0o755),
        # 0.5 had the data file 2.0 has again.
        "usr/share/data.bin": random.Random(f"data {version.replace('0.5', '2.0')}").randbytes(
            60_000
        ),
    }
    top = {f"usr/share/v{version}/{i}.bin": random.Random(f"{version} {i}").randbytes(30_000)
           for i in range(3)}  # fmt: skip
    return [libs, base, top]


def push(
    registry: RegistryView, tmp: Path, ref: str, version: str, key: Any, signed: int | None = None
) -> None:
    layout = tmp / f"layout-{version}"
    labels = {"org.opencontainers.image.version": version, "containers.bootc": "1"}
    build_tree_image(layout, layers(version), ref="x", labels=labels)
    copy_image(
        ImageName.parse(f"oci:{layout}:x"),
        ImageName.parse(f"docker://{ref}"),
        src_ctx=registry.ctx(),
        options=CHUNKED,
    )
    sign_image(ImageReference.parse(ref), key, registry.ctx(), timestamp=signed)


def device(capsys: pytest.CaptureFixture[str], sysroot: Path, source: str) -> Path:
    """A directory device that installed and booted *source*; its booted root."""
    assert run(capsys, "install", "to-filesystem", str(sysroot), "--source", source)[0] == 0
    assert run(capsys, "boot", "--sysroot", str(sysroot))[0] == 0
    [root] = [p for p in (sysroot / "atoll/deploy/default/deploy").iterdir() if p.is_dir()]
    return root


def trust(root: Path, host: str, public: Path, updates: str = "") -> None:
    (root / "etc/containers").mkdir(parents=True, exist_ok=True)
    policy = {
        "default": [{"type": "reject"}],
        "transports": {"docker": {host: [{"type": "sigstoreSigned", "keyPath": str(public)}]}},
    }
    (root / "etc/containers/policy.json").write_text(json.dumps(policy))
    if updates:
        (root / "etc/atoll").mkdir(parents=True, exist_ok=True)
        (root / "etc/atoll/updates.toml").write_text(updates)


def staged_commit(sysroot: Path) -> str | None:
    path = sysroot / "atoll/staged.json"
    return json.loads(path.read_text())["commit"] if path.exists() else None


def rewrite(bundle: Path, out: Path, blob: str, change: Any) -> None:
    """*bundle* with blob *blob* replaced by ``change(bytes)``, and every digest
    that names it (the description, the bundle manifest, index.json) made to
    match: a consistent bundle that nothing but its contents can refuse."""
    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]

    def name(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":")[1]

    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        files[name(digest)] = data
        return digest

    index = json.loads(files["index.json"])
    # Unsigned: the signature would name the old digest.
    index["manifests"] = [
        m for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] != "atoll-bundle.sig"
    ]  # fmt: skip
    [entry] = [
        m for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "atoll-bundle"
    ]  # fmt: skip
    manifest = json.loads(files[name(entry["digest"])])
    config = files[name(manifest["config"]["digest"])]
    new_blob = put(change(files.pop(name(blob))))
    config = config.replace(blob.encode(), new_blob.encode())
    manifest["config"] |= {"digest": put(config), "size": len(config)}
    for layer in manifest["layers"]:
        if layer["digest"] == blob:
            layer |= {"digest": new_blob, "size": len(files[name(new_blob)])}
    raw = json.dumps(manifest).encode()
    entry |= {"digest": put(raw), "size": len(raw)}
    files["index.json"] = json.dumps(index).encode()
    with tarfile.open(out, "w") as tar:
        for member, data in sorted(files.items()):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_delta_from_bundle_applies_offline_as_a_registry_upgrade_would(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signer = generate_key_pair(tmp_path / "signer")
    key = load_private_key(signer.private_path)
    repo = f"{registry.host}/{registry.new_repo('os')}"
    v1, v2 = f"{repo}:1.0", f"{repo}:2.0"
    push(registry, tmp_path, v1, "1.0", key)
    # v2's only signature is two hours old.
    push(registry, tmp_path, v2, "2.0", key, signed=int(time.time()) - 7200)

    full, delta = tmp_path / "full.bundle", tmp_path / "delta.bundle"
    code, whole_doc, err = run(
        capsys, "bundle", "create", f"docker://{v2}", "-o", str(full), "--json"
    )
    assert code == 0, err
    assert whole_doc["atollBundle"] == 1 and whole_doc["delta"] is None
    code, created, err = run(
        capsys, "bundle", "create", f"docker://{v2}", "--delta-from", f"docker://{v1}",
        "-o", str(delta), "--key", str(signer.private_path), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert created["atollBundle"] == 2
    made = created["delta"]
    assert made["files"] is not None and made["ranges"]
    # The layers v2 has and v1 lacks: what a bundle of whole layers carries.
    with open_source(ImageName.parse(f"docker://{v2}"), registry.ctx()) as source:
        new_layers = json.loads(source.get_manifest()[0])["layers"]
    with open_source(ImageName.parse(f"docker://{v1}"), registry.ctx()) as source:
        old_digests = {d["digest"] for d in json.loads(source.get_manifest()[0])["layers"]}
    whole_layers = sum(d["size"] for d in new_layers if d["digest"] not in old_digests)
    sizes = {
        "full bundle": full.stat().st_size,
        "layers v1 lacks": whole_layers,
        "--delta-from bundle": delta.stat().st_size,
    }
    with capsys.disabled():
        print("bundle sizes:", json.dumps(sizes))
    assert sizes["--delta-from bundle"] < whole_layers < sizes["full bundle"]

    # Device A runs v1 and trusts the signer; it applies the bundle with no network.
    a = tmp_path / "a"
    trust(device(capsys, a, v1), registry.host, signer.public_path)
    proc = atoll_offline("bundle", "apply", str(delta), "--sysroot", str(a), "--json")
    assert proc.returncode == 0, proc.stderr
    applied = json.loads(proc.stdout)
    assert applied["message"] == "staged"
    assert [t["requirement"] for t in applied["bundle"]["trust"]] == ["sigstoreSigned"]
    paths = applied["transfer"]["paths"]
    assert paths["delta"]["files"] >= 1 and paths["ranges"]["layers"] >= 1
    assert paths["whole"]["layers"] >= 1
    # Device B runs v1 and switches from the registry: the very same commit.
    b = tmp_path / "b"
    device(capsys, b, v1)
    assert run(capsys, "switch", "--sysroot", str(b), v2)[0] == 0
    v2_commit = staged_commit(a)
    assert v2_commit == staged_commit(b) is not None
    assert run(capsys, "boot", "--sysroot", str(a))[0] == 0
    code, doc, _ = run(capsys, "status", "--sysroot", str(a), "--json")
    booted = doc["status"]["booted"]
    root = a / "atoll/deploy/default/deploy"
    root = root / f"{booted['atoll']['commit']}.{booted['atoll']['deploySerial']}"
    assert (root / "usr/sbin/daemon").read_bytes() == _daemon("2.0")

    # Device D ran 0.5 before v1: its store has v2's data file already, so its
    # import asks for other ranges than the bundle was made for (bytes between
    # the files read as zeros, every file still checked): the same commit.
    push(registry, tmp_path, f"{repo}:0.5", "0.5", key)
    d = tmp_path / "d"
    device(capsys, d, f"{repo}:0.5")
    assert run(capsys, "switch", "--sysroot", str(d), v1)[0] == 0
    assert run(capsys, "boot", "--sysroot", str(d))[0] == 0
    proc = atoll_offline("bundle", "apply", str(delta), "--sysroot", str(d), "--json")
    assert proc.returncode == 0, proc.stderr
    assert staged_commit(d) == v2_commit

    # Refused, leaving nothing staged, on a device at v1:
    c = tmp_path / "c"
    trust(device(capsys, c, v1), registry.host, signer.public_path)

    def refused(bundle: Path, code: int, says: str, *args: str) -> None:
        proc = atoll_offline("bundle", "apply", str(bundle), "--sysroot", str(c), *args)
        assert proc.returncode == code, proc.stderr
        assert says in proc.stderr
        assert staged_commit(c) is None

    # a truncated file;
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(delta.read_bytes()[: delta.stat().st_size // 2])
    refused(cut, 86, "truncated")
    # a delta whose patches do not make v2's files (the bundle otherwise consistent):
    # the puller refuses the delta, and the bundle lacks the frames to fall back on.
    payload = next(
        r for r in made["ranges"] if r["digest"] not in {d["digest"] for d in new_layers}
    )
    bad = tmp_path / "bad-delta.bundle"
    rewrite(delta, bad, payload["blob"], lambda data: bytes(b ^ 0x5A for b in data))
    refused(bad, 87, "the bundle is not signed")  # the policy wants a signed bundle
    anything = tmp_path / "anything.json"
    anything.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    refused(bad, 86, "which the bundle does not hold", "--policy", str(anything))
    # a device that runs another image than the delta's base (b runs v2 now);
    assert run(capsys, "boot", "--sysroot", str(b))[0] == 0
    proc = atoll_offline("bundle", "apply", str(delta), "--sysroot", str(b))
    assert proc.returncode == 86, proc.stderr
    assert "and this device runs" in proc.stderr

    # an image signature the device's policy does not accept;
    stranger = generate_key_pair(tmp_path / "stranger")
    [c_root] = [p for p in (c / "atoll/deploy/default/deploy").iterdir() if p.is_dir()]
    trust(c_root, registry.host, stranger.public_path)
    refused(delta, 87, "no bundle signature verifies")  # nor the bundle's
    refused(delta, 61, "", "--key", str(signer.public_path))
    # a signature older than the device's [trust] max_signature_age.
    trust(c_root, registry.host, signer.public_path, '[trust]\nmax_signature_age = "1h"\n')
    refused(delta, 99, "")
