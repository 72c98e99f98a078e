"""``atoll delta create`` then ``atoll upgrade`` of a directory device: the
changed files come from the delta, reported as the ``delta`` path in
``--json``, progress and status, and the deployment holds NEW's files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.manifest import Compression
from atoll.oci.transports import ImageName
from helpers.osimage import FileSpec, base_files
from helpers.registry import RegistryView
from helpers.treeimage import Node, build_tree_image

pytestmark = pytest.mark.integration

CHUNKED = CopyOptions(dest_compression=Compression.ZSTD, zstd_chunked=True)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out) if "--json" in args or "--format" in args else None


def _binary(version: str) -> bytes:
    data = bytearray(random.Random("daemon").randbytes(300_000))
    data[150_000:150_012] = f"build {version:>6}".encode()[:12]
    return bytes(data)


def push(view: RegistryView, tmp: Path, ref: str, version: str) -> None:
    files: dict[str, Any] = {}
    for path, spec in base_files(version).items():
        if isinstance(spec, FileSpec):
            files[path] = (
                Node("symlink", target=spec.symlink)
                if spec.symlink
                else Node(content=spec.content, mode=spec.mode)
            )
        elif spec is not None:
            files[path] = spec
    files |= {f"usr/lib/lib{i}.so": random.Random(i).randbytes(30_000) for i in range(20)}
    files["usr/sbin/daemon"] = Node(content=_binary(version), mode=0o755)
    layout = tmp / f"layout-{version}"
    labels = {"org.opencontainers.image.version": version, "containers.bootc": "1"}
    build_tree_image(layout, [files], ref="x", labels=labels)
    dst = ImageName.parse(f"docker://{ref}")
    copy_image(ImageName.parse(f"oci:{layout}:x"), dst, src_ctx=view.ctx(), options=CHUNKED)


def test_upgrade_uses_a_published_delta(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = registry.new_repo("os")
    ref = f"{registry.host}/{repo}"
    push(registry, tmp_path, f"{ref}:1.0", "1.0")
    sysroot = tmp_path / "sysroot"
    s = ("--sysroot", str(sysroot))
    run(capsys, "install", "to-filesystem", str(sysroot), "--source", f"{ref}:1.0")
    run(capsys, "boot", *s)
    push(registry, tmp_path, f"{ref}:1.0-next", "2.0")
    created = run(
        capsys, "delta", "create", f"docker://{ref}:1.0", f"docker://{ref}:1.0-next",
        "--to", f"docker://{ref}", "--json",
    )  # fmt: skip
    assert created["patched"] >= 1 and created["payloadBytes"] < created["replacedFrameBytes"]

    read, write = os.pipe()
    try:
        result = run(capsys, "--progress-fd", str(write), "switch", *s, f"{ref}:1.0-next", "--json")
    finally:
        os.close(write)
        with os.fdopen(read) as fh:
            events = [json.loads(line) for line in fh.read().splitlines()]
    transfer = result["transfer"]
    assert transfer["delta"] == created["delta"]
    delta = transfer["paths"]["delta"]
    assert delta["files"] >= 1 and delta["bytes"] < created["replacedFrameBytes"]
    assert transfer["bytesMoved"] == sum(
        row["bytes"] for name, row in transfer["paths"].items() if name != "present"
    )
    # The payload's ranges show as a subtask of kind delta.
    subs = [
        sub
        for event in events
        if event["type"] == "ProgressBytes"
        for sub in event["subtasks"]
        if sub["subtask"] == "delta"
    ]
    assert subs and max(sub["bytes"] for sub in subs) <= delta["bytes"]
    assert max(sub["bytesTotal"] for sub in subs) > 0

    main(["status", *s])
    assert "delta" in capsys.readouterr().out
    run(capsys, "boot", *s)
    doc = run(capsys, "status", *s, "--format", "json")
    booted = doc["status"]["booted"]
    root = sysroot / "atoll/deploy/default/deploy"
    root = root / f"{booted['atoll']['commit']}.{booted['atoll']['deploySerial']}"
    assert (root / "usr/sbin/daemon").read_bytes() == _binary("2.0")
