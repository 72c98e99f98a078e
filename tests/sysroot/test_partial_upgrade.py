"""``atoll upgrade`` of a directory device from zstd:chunked images: only missing
files move, the report says by which path, and a bad TOC leaves the device as it was."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.manifest import Compression
from atoll.oci.transports import ImageName
from helpers.osimage import FileSpec, base_files
from helpers.registry import FaultProxyView, RegistryView
from helpers.treeimage import Node, build_tree_image

pytestmark = pytest.mark.integration

CHUNKED = CopyOptions(dest_compression=Compression.ZSTD, zstd_chunked=True)


def atoll(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> Any:
    result = main(list(args))
    captured = capsys.readouterr()
    assert result == code, captured.err
    if "--json" in args or "--format" in args:
        return json.loads(captured.out)
    return captured.err


def _noise(seed: str, size: int) -> bytes:
    out, block = bytearray(), seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def os_layer(version: str) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for path, spec in base_files(version).items():
        if isinstance(spec, FileSpec):
            if spec.symlink:
                files[path] = Node("symlink", target=spec.symlink)
            else:
                files[path] = Node(content=spec.content, mode=spec.mode)
        elif spec is not None:
            files[path] = spec
    # The bulk of an OS that an update leaves alone.
    for i in range(40):
        files[f"usr/lib/x86_64-linux-gnu/lib{i}.so"] = _noise(f"lib{i}", 30_000)
    return files


def push(view: RegistryView, tmp: Path, ref: str, version: str) -> None:
    layout = tmp / f"layout-{version}"
    labels = {"org.opencontainers.image.version": version, "containers.bootc": "1"}
    build_tree_image(
        layout, [os_layer(version), {"etc/motd": f"v{version}\n"}], ref="x", labels=labels
    )
    ctx = view.ctx()
    dst = ImageName.parse(f"docker://{ref}")
    copy_image(ImageName.parse(f"oci:{layout}:x"), dst, src_ctx=ctx, options=CHUNKED)


def test_upgrade_moves_only_changed_files_and_reports_paths(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = f"{registry.host}/{registry.new_repo('os')}:stable"
    push(registry, tmp_path, ref, "1.0")
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    installed = atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", ref, "--json")
    assert {row["path"] for row in installed["transfer"]["layers"]} == {"whole"}
    atoll(capsys, "boot", *s)

    push(registry, tmp_path, ref, "2.0")
    read, write = os.pipe()
    try:
        result = atoll(capsys, "--progress-fd", str(write), "upgrade", *s, "--json")
    finally:
        os.close(write)
        with os.fdopen(read) as fh:
            events = [json.loads(line) for line in fh.read().splitlines()]
    transfer = result["transfer"]
    base, _ = transfer["layers"]
    assert base["path"] == "ranges", base
    assert base["bytes"] < base["size"] / 3
    # No delta is published: asking for one (referrers API, then tag) is all it cost.
    assert transfer["paths"]["delta"] == {"bytes": 0, "requests": 2, "layers": 0, "files": 0}
    assert transfer["delta"].startswith("none published from sha256:")
    assert transfer["paths"]["ranges"]["layers"] >= 1
    assert transfer["bytesMoved"] == sum(row["bytes"] for row in transfer["layers"])
    # Where the time went: each phase was seen, checkout counted in elapsed.
    seconds = transfer["seconds"]
    assert set(seconds) == {"fetch", "decompress", "verify", "checkout", "elapsed"}
    assert all(seconds[phase] > 0 for phase in ("fetch", "decompress", "verify", "checkout")), (
        seconds
    )
    assert seconds["elapsed"] >= seconds["checkout"]
    # Progress events name the path of each subtask and count its bytes.
    ranges = [
        sub
        for event in events
        if event["type"] == "ProgressBytes"
        for sub in event["subtasks"]
        if sub["subtask"] == "ranges"
    ]
    assert ranges and max(sub["bytesTotal"] for sub in ranges) == base["bytes"]

    doc = atoll(capsys, "status", *s, "--format", "json")
    last = doc["status"]["atoll"]["lastTransfer"]
    assert last["imageDigest"] == result["imageDigest"]
    assert last["paths"] == transfer["paths"]
    assert last["seconds"] == seconds
    main(["status", *s])
    assert "Last update" in capsys.readouterr().out
    # The staged deployment holds v2's files.
    atoll(capsys, "boot", *s)
    doc = atoll(capsys, "status", *s, "--format", "json")
    booted = doc["status"]["booted"]
    assert booted["image"]["version"] == "2.0"
    root = sysroot / "atoll/deploy/default/deploy"
    root = root / f"{booted['atoll']['commit']}.{booted['atoll']['deploySerial']}"
    assert (root / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho tool 2.0\n"


def test_a_toc_that_does_not_match_leaves_the_device_as_it_was(
    fault_proxy: FaultProxyView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = fault_proxy.registry.new_repo("os")
    push(fault_proxy.registry, tmp_path, f"{fault_proxy.registry.host}/{repo}:stable", "1.0")
    ref = f"{fault_proxy.host}/{repo}:stable"
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    atoll(capsys, "install", "to-filesystem", str(sysroot), "--source", ref)
    atoll(capsys, "boot", *s)
    before = atoll(capsys, "status", *s, "--format", "json")
    push(fault_proxy.registry, tmp_path, f"{fault_proxy.registry.host}/{repo}:stable", "2.0")
    fault_proxy.proxy.corrupt(r"/blobs/sha256:", 0, times=None, ranged=True)
    err = atoll(capsys, "upgrade", *s, code=14)
    assert "does not match the manifest's" in err
    after = atoll(capsys, "status", *s, "--format", "json")
    assert after["status"]["staged"] is None
    assert after["status"]["booted"] == before["status"]["booted"]
