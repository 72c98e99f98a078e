"""``atoll image copy`` through the command line, between local transports."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import zstandard

from atoll.cli.main import main
from helpers.images import build_image, build_multiarch, file_digest


def run_cli(*args: str) -> int:
    return main(list(args))


def index_of(layout: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((layout / "index.json").read_text())
    return data


def test_copy_keeps_the_digest_and_writes_digestfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = build_image(tmp_path / "src", "v1", layers=3)
    digestfile = tmp_path / "digest"
    code = run_cli(
        "image",
        "copy",
        "--json",
        "--digestfile",
        str(digestfile),
        f"oci:{img.layout}:v1",
        f"oci:{tmp_path / 'dst'}:copied",
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["digest"] == img.manifest_digest
    assert result["blobsCopied"] == 4
    assert digestfile.read_text() == img.manifest_digest
    manifest = tmp_path / "dst" / "blobs" / "sha256" / img.manifest_digest.split(":")[1]
    assert manifest.read_bytes() == img.manifest
    # A second copy finds every blob in place.
    assert (
        run_cli("image", "copy", "--json", f"oci:{img.layout}:v1", f"oci:{tmp_path / 'dst'}:again")
        == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert again["blobsSkipped"] == 4
    assert again["bytesCopied"] == 0


def test_human_output_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = build_image(tmp_path / "src")
    assert run_cli("image", "copy", f"oci:{img.layout}", f"dir:{tmp_path / 'd'}") == 0
    out = capsys.readouterr().out
    assert f"digest {img.manifest_digest}" in out
    assert run_cli("-q", "image", "copy", f"oci:{img.layout}", f"dir:{tmp_path / 'e'}") == 0
    assert capsys.readouterr() == (img.manifest_digest + "\n", "")


def test_zstd_conversion_rewrites_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = build_image(tmp_path / "src", layers=2, layer_size=100_000)
    dst = tmp_path / "dst"
    code = run_cli(
        "image",
        "copy",
        "--json",
        "--dest-compress-format",
        "zstd",
        f"oci:{img.layout}",
        f"oci:{dst}:z",
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["converted"] is True
    assert result["digest"] != img.manifest_digest
    manifest = json.loads((dst / "blobs" / "sha256" / result["digest"].split(":")[1]).read_bytes())
    config = json.loads(
        (img.layout / "blobs" / "sha256" / img.config_digest.split(":")[1]).read_bytes()
    )
    for layer, diff_id, old in zip(
        manifest["layers"], config["rootfs"]["diff_ids"], img.layer_digests, strict=True
    ):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        blob = dst / "blobs" / "sha256" / layer["digest"].split(":")[1]
        assert file_digest(blob) == layer["digest"]
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(blob.read_bytes())
        old_plain = gzip.decompress(
            (img.layout / "blobs" / "sha256" / old.split(":")[1]).read_bytes()
        )
        assert plain == old_plain
        assert "sha256:" + __import__("hashlib").sha256(plain).hexdigest() == diff_id


def test_preserve_digests_refuses_conversion_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = build_image(tmp_path / "src")
    code = run_cli(
        "image",
        "copy",
        "--preserve-digests",
        "--dest-compress-format",
        "zstd",
        f"oci:{img.layout}",
        f"oci:{tmp_path / 'dst'}",
    )
    assert code == 6
    err = capsys.readouterr().err
    assert err.startswith("atoll: error: cannot compress layers as zstd and preserve digests")
    assert not (tmp_path / "dst").exists()


def test_index_selects_platform_or_copies_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_digest, images = build_multiarch(tmp_path / "src")
    # One platform: the named architecture's image, not the index.
    assert (
        run_cli(
            "image",
            "copy",
            "--json",
            "--override-arch",
            "arm64",
            f"oci:{tmp_path / 'src'}",
            f"oci:{tmp_path / 'one'}",
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["digest"] == images["arm64"].manifest_digest
    # --all: the index itself, byte for byte, and every image in it.
    assert (
        run_cli(
            "image", "copy", "--json", "--all", f"oci:{tmp_path / 'src'}", f"oci:{tmp_path / 'all'}"
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["digest"] == index_digest
    assert result["images"] == 2
    for image in images.values():
        assert (
            tmp_path / "all" / "blobs" / "sha256" / image.manifest_digest.split(":")[1]
        ).exists()
    # No image for the platform: exit 13 and no destination.
    assert (
        run_cli(
            "image",
            "copy",
            "--override-arch",
            "s390x",
            f"oci:{tmp_path / 'src'}",
            f"oci:{tmp_path / 'none'}",
        )
        == 13
    )
    assert "no image for platform linux/s390x" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_progress_fd_emits_bootc_shaped_events(tmp_path: Path) -> None:
    img = build_image(tmp_path / "src", layers=2)
    read_fd, write_fd = os.pipe()
    try:
        code = run_cli(
            "-q",
            "image",
            "copy",
            "--progress-fd",
            str(write_fd),
            f"oci:{img.layout}",
            f"oci:{tmp_path / 'dst'}",
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        events = [json.loads(line) for line in fh]
    assert code == 0
    assert events[0] == {"type": "Start", "version": 1}
    assert events[-1]["type"] == "End" and events[-1]["ok"] is True
    last_bytes = [e for e in events if e["type"] == "ProgressBytes"][-1]
    assert last_bytes["task"] == "copy"
    assert last_bytes["steps"] == last_bytes["stepsTotal"] == 3
    assert last_bytes["bytes"] == last_bytes["bytesTotal"] > 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("image", "copy", "nonsense", "oci:/tmp/x"), 3, "no transport"),
        (("image", "copy", "docker://Bad/Name", "oci:/tmp/x"), 3, "lowercase"),
        (("image", "copy", "ftp:x", "oci:/tmp/x"), 3, "unknown transport 'ftp'"),
        (("image", "copy", "oci:/nonexistent/layout", "oci:/tmp/x"), 12, "/nonexistent/layout"),
        (("image", "copy", "--parallel", "0", "oci:/a", "oci:/b"), 2, "--parallel"),
        (("image", "frobnicate"), 2, "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_its_exit_code(
    args: tuple[str, ...], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*args) == code
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("atoll: error: ")
    assert message in first
    assert len(err.splitlines()) <= 2
