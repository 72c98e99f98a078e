"""``atoll.sysroot.fetch``: an image is checked as containers/image checks it before
anything is staged: its config is an image config, with fields of the right types."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atoll.cli.main import main
from helpers.osimage import build_os_image

EMPTY = "application/vnd.oci.empty.v1+json"


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest.removeprefix("sha256:")


def put(layout: Path, data: bytes) -> str:
    hexdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}"


def rewrite(
    layout: Path,
    ref: str,
    config: Callable[[dict[str, Any]], None] | None = None,
    config_media_type: str | None = None,
) -> None:
    """Change the config of *ref* (and the manifest that names it) in place."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == ref
    ]
    manifest = json.loads(blob(layout, entry["digest"]).read_bytes())
    doc = json.loads(blob(layout, manifest["config"]["digest"]).read_bytes())
    if config is not None:
        config(doc)
    raw = json.dumps(doc).encode()
    manifest["config"] = {
        "mediaType": config_media_type or manifest["config"]["mediaType"],
        "digest": put(layout, raw),
        "size": len(raw),
    }
    raw = json.dumps(manifest).encode()
    entry["digest"], entry["size"] = put(layout, raw), len(raw)
    (layout / "index.json").write_text(json.dumps(index))


def set_created(doc: dict[str, Any]) -> None:
    doc["created"] = "not a date"


def set_list_label(doc: dict[str, Any]) -> None:
    doc["config"]["Labels"]["org.opencontainers.image.version"] = ["list"]


def set_number_os(doc: dict[str, Any]) -> None:
    doc["os"] = 7


@pytest.mark.parametrize(
    ("change", "media_type", "message"),
    [
        (set_created, None, "created 'not a date' is not an RFC 3339 date and time"),
        (set_list_label, None, 'config.Labels["org.opencontainers.image.version"] must be a'),
        (set_number_os, None, "os must be a string"),
        (None, EMPTY, "not an OS image: its config has media type"),
    ],
)
def test_install_and_switch_refuse_a_malformed_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Callable[[dict[str, Any]], None] | None,
    media_type: str | None,
    message: str,
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    build_os_image(images, "bad", version="2.0")
    rewrite(images, "bad", change, media_type)

    refused = tmp_path / "refused"
    code = main(["install", "to-filesystem", str(refused), "--source", f"oci:{images}:bad"])
    err = capsys.readouterr().err
    assert code == 10, err
    assert message in err

    sysroot = tmp_path / "sysroot"
    assert main(["install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"]) == 0
    assert main(["boot", "--sysroot", str(sysroot)]) == 0
    capsys.readouterr()
    code = main(["switch", "--sysroot", str(sysroot), f"oci:{images}:bad"])
    err = capsys.readouterr().err
    assert code == 10, err
    assert message in err
    assert not (sysroot / "atoll/staged.json").exists()
    assert main(["status", "--sysroot", str(sysroot), "--format", "json"]) == 0
    booted = json.loads(capsys.readouterr().out)["status"]["booted"]["image"]
    assert booted["version"] == "1.0" and booted["timestamp"] == "2026-01-01T00:00:00Z"
