"""Rechunking small explicit trees (helpers.treeimage): whiteouts, hard links,
xattrs, zstd, images without a package database and with an rpm one."""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from atoll.build.layerwrite import ENCODERS
from atoll.build.rechunk import RechunkOptions, rechunk_image
from atoll.errors import LayerError, PackageDatabaseError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from helpers.cli import run_atoll
from helpers.treeimage import OPAQUE, WHITEOUT, Node, build_tree_image, hardlink, symlink


def _layers(layout: Path, ref: str) -> list[list[tarfile.TarInfo]]:
    index = json.loads((layout / "index.json").read_text())
    key = "org.opencontainers.image.ref.name"
    desc = next(m for m in index["manifests"] if m["annotations"][key] == ref)
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    out = []
    for layer in manifest["layers"]:
        data = (layout / "blobs/sha256" / layer["digest"][7:]).read_bytes()
        if layer["mediaType"].endswith("+zstd"):
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
            data = reader.read()
        else:
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            out.append(list(tar))
    return out


def _rechunk(tmp_path: Path, src: str, **kw: object) -> Path:
    out = tmp_path / "out"
    rechunk_image(
        ImageName.parse(src),
        ImageName.parse(f"oci:{out}:latest"),
        SystemContext(tmpdir=tmp_path),
        RechunkOptions(max_layers=8, **kw),  # type: ignore[arg-type]
    )
    return out


def test_whiteouts_apply_and_hard_links_stay_links(tmp_path: Path) -> None:
    image = build_tree_image(
        tmp_path / "src",
        [
            {
                "etc/gone": "x",
                "opt/old/a": "a",
                "usr/bin/tool": Node(content=b"TOOL", mode=0o755),
                "usr/bin/alias": hardlink("usr/bin/tool"),
                "usr/lib/cap": Node(content=b"c", xattrs={"security.capability": b"\x01\x02"}),
            },
            {"etc/gone": WHITEOUT, "opt/old": OPAQUE, "opt/old/b": "b"},
            {"bin": symlink("usr/bin")},
        ],
    )
    out = _rechunk(tmp_path, image.name, encoder=ENCODERS["zstd"])
    members = [m for layer in _layers(out, "latest") for m in layer]
    names = {m.name.rstrip("/") for m in members}
    assert "etc/gone" not in names and "opt/old/a" not in names and "opt/old/b" in names
    tool = next(m for m in members if m.name == "usr/bin/tool")
    alias = next(m for m in members if m.name == "usr/bin/alias")
    # The first name in the layer is the file, the other a hard link to it.
    assert alias.isreg() and alias.mode == 0o755 and alias.size == 4
    assert tool.islnk() and tool.linkname == "usr/bin/alias"
    cap = next(m for m in members if m.name == "usr/lib/cap")
    assert cap.pax_headers.get("SCHILY.xattr.security.capability") is not None
    assert next(m for m in members if m.name == "bin").linkname == "usr/bin"
    assert all(m.uname == "" and m.gname == "" for m in members)


def test_a_path_with_dot_dot_is_refused(tmp_path: Path) -> None:
    image = build_tree_image(tmp_path / "src", [{"../escape": "x"}], parents=False)
    with pytest.raises(LayerError, match=r"'\.\.'"):
        _rechunk(tmp_path, image.name)


def test_an_rpm_image_needs_rpm(tmp_path: Path) -> None:
    image = build_tree_image(
        tmp_path / "src", [{"usr/lib/sysimage/rpm/rpmdb.sqlite": b"not a database"}]
    )
    with pytest.raises(PackageDatabaseError, match="rpm"):
        _rechunk(tmp_path, image.name)
    proc = run_atoll("rechunk", image.name, f"oci:{tmp_path}/cli:latest", "--tmpdir", str(tmp_path))
    assert proc.returncode == 78, proc.stderr
    assert "rpm" in proc.stderr
    if shutil.which("rpm") is None:
        assert "rpm is not installed here" in proc.stderr


def test_without_a_package_database_files_are_grouped_by_directory(tmp_path: Path) -> None:
    files = {f"srv/d{i}/f{j}": f"{i}-{j}" for i in range(20) for j in range(3)}
    image = build_tree_image(tmp_path / "src", [files])
    proc = run_atoll(
        "--json",
        "rechunk",
        image.name,
        f"oci:{tmp_path}/o:latest",
        "--max-layers",
        "8",
        "--tmpdir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["package_format"] == "none" and data["packages"] == 0
    assert 1 < len(data["layers"]) <= 8
    assert all(layer["group"].startswith("files/") for layer in data["layers"])
    assert sum(layer["files"] for layer in data["layers"]) == len(files)
    proc = run_atoll("rechunk", image.name, f"oci:{tmp_path}/o:x", "--max-layers", "3")
    assert proc.returncode == 77 and "too few" in proc.stderr


def test_zstd_chunked_layers_carry_their_table_of_contents(tmp_path: Path) -> None:
    """--compression zstd:chunked: every layer is an ordinary zstd tar for other
    clients, and names its TOC in the manifest, so devices can fetch single files."""
    from atoll.oci.chunked import MANIFEST_CHECKSUM

    files = {f"srv/d{i}/f{j}": f"{i}-{j}" * 50 for i in range(6) for j in range(3)}
    image = build_tree_image(tmp_path / "src", [files])
    out = _rechunk(tmp_path, image.name, encoder=ENCODERS["zstd:chunked"])
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    assert manifest["layers"]
    assert all(MANIFEST_CHECKSUM in layer["annotations"] for layer in manifest["layers"])
    names = {m.name for layer in _layers(out, "latest") for m in layer if m.isfile()}
    assert names == set(files)


def _manifest_layers(out: Path) -> list[dict[str, Any]]:
    index = json.loads((out / "index.json").read_text())
    blob = out / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    return list(json.loads(blob.read_bytes())["layers"])


def test_compression_level_picks_the_frames_level_and_every_layer_rebuilds_from_its_toc(
    tmp_path: Path,
) -> None:
    """zstd:chunked frames default to level 19 (fewer bytes per fetched file than
    level 3); rechunk's tars are what tarfile writes, so each layer is marked to be
    rebuilt from its TOC alone.  Levels a format does not take are refused."""
    from atoll.oci.chunked import TAR_FROM_TOC

    words = [f"w{i:03d}" for i in range(400)]
    rng = random.Random(7)
    files = {f"usr/share/doc/p{i}/text": " ".join(rng.choices(words, k=6000)) for i in range(4)}
    image = build_tree_image(tmp_path / "src", [files])
    sizes = {}
    for level in ("19", "3"):
        out = tmp_path / f"l{level}"
        argv = [image.name, f"oci:{out}:latest", "--compression", "zstd:chunked"]
        proc = run_atoll(
            "rechunk", *argv, *(["--compression-level", level] if level == "3" else [])
        )
        assert proc.returncode == 0, proc.stderr
        layers = _manifest_layers(out)
        assert all(TAR_FROM_TOC in layer["annotations"] for layer in layers)
        sizes[level] = sum(layer["size"] for layer in layers)
    assert sizes["19"] < sizes["3"] * 0.9, sizes
    for compression, level in (("zstd:chunked", "20"), ("gzip", "10"), ("zstd", "0")):
        argv = [image.name, f"oci:{tmp_path}/bad:x", "--compression", compression]
        proc = run_atoll("rechunk", *argv, "--compression-level", level)
        assert proc.returncode == 2 and f"not {level}" in proc.stderr, proc.stderr
