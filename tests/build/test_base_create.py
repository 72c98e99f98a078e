"""atoll base create: a base image from distribution packages.

The fast tests run the preparation and the layer writer on small trees; the
integration test debootstraps a real bookworm base from the Debian mirror
(cached in the shared test cache), lints it, builds a blueprint on it and
creates it twice."""

from __future__ import annotations

import gzip
import io
import json
import marshal
import os
import py_compile
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from atoll.build.base import (
    BaseSpec,
    _bootstrap,
    _layer,
    _prepare,
    create_base,
    host_compiles_for,
    tree_bytecode,
    tree_initramfs,
)
from atoll.build.blueprint import parse_blueprint
from atoll.build.lint import lint_image, stale_on_device
from atoll.build.podman_build import BuildSettings, build_blueprint
from atoll.cli.main import main
from atoll.errors import BaseImageError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.treecache import base_layer
from helpers.debian import cache_root
from helpers.parts import missing, require_tool


def _tree(root: Path, mtime: int) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=debian\n")
    for path in [*root.rglob("*"), root]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return root


def test_layers_of_the_same_files_at_other_times_are_the_same(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    first = _layer(_tree(tmp_path / "a", 1_800_000_000), blobs, 1_767_225_600)
    second = _layer(_tree(tmp_path / "b", 1_900_000_000), blobs, 1_767_225_600)
    assert first == second
    later = _layer(tmp_path / "b", blobs, 1_850_000_000)
    assert later.diff_id != first.diff_id


def test_the_trees_layer_leaves_out_what_the_second_layer_replaces(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", 1_800_000_000)
    whole, _ = base_layer(tree, tmp_path / "cache", clamp=1_767_225_600)
    without, blob = base_layer(
        tree, tmp_path / "cache", clamp=1_767_225_600, leave_out=frozenset({"usr/bin/tool"})
    )
    assert without != whole
    with tarfile.open(whole) as tar:
        assert "usr/bin/tool" in tar.getnames()
    with tarfile.open(without) as tar:
        assert "usr/bin/tool" not in tar.getnames() and "etc/os-release" in tar.getnames()
    again = base_layer(
        tree, tmp_path / "cache", clamp=1_767_225_600, leave_out=frozenset({"usr/bin/tool"})
    )
    assert again == (without, blob)


def test_prepare_moves_kernels_and_removes_what_varies(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ("boot", "etc", "var/log/apt", "var/cache/apt/archives", "var/lib/dbus"):
        (root / name).mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-28-amd64").write_bytes(b"kernel")
    (root / "boot/initrd.img-6.1.0-28-amd64").write_bytes(b"initrd")
    (root / "boot/config-6.1.0-28-amd64").write_text("x")
    (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-28-amd64")
    (root / "var/log/apt/history.log").write_text("Start-Date: today\n")
    (root / "var/cache/apt/pkgcache.bin").write_bytes(b"x")
    (root / "var/cache/apt/archives/a.deb").write_bytes(b"x")
    (root / "var/lib/dbus/machine-id").write_text("abc\n")
    (root / "etc/machine-id").write_text("abc\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    _prepare(BaseSpec("debian", "bookworm"), root)
    modules = root / "usr/lib/modules/6.1.0-28-amd64"
    assert (modules / "vmlinuz").read_bytes() == b"kernel"
    assert (modules / "initramfs.img").read_bytes() == b"initrd"
    assert list((root / "boot").iterdir()) == []
    assert not (root / "vmlinuz").is_symlink()
    assert not (root / "var/log/apt/history.log").exists()
    assert (root / "var/log/apt").is_dir()
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert not (root / "var/cache/apt/archives/a.deb").exists()
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert (root / "etc/resolv.conf").read_text() == ""


def test_stale_bytecode_gets_hash_checked_bytecode_beside_the_tree(tmp_path: Path) -> None:
    """Timestamp bytecode of a source with an mtime (what a package install leaves)
    is compiled again, hash-checked, outside the tree; the rest is left alone."""
    tag = sys.implementation.cache_tag
    lib = f"usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    entry = tmp_path / "debian-x"
    tree = entry / "rootfs"
    (tree / lib).mkdir(parents=True)
    modes = py_compile.PycInvalidationMode
    for name, mode in (("stale", modes.TIMESTAMP), ("hashed", modes.CHECKED_HASH)):
        source = tree / lib / f"{name}.py"
        source.write_text(f"NAME = {name!r}\nKNOWN = NAME in {{'a', 'b', 'c'}}\n")
        os.utime(source, (1_700_000_000, 1_700_000_000))
        py_compile.compile(str(source), invalidation_mode=mode)
    # Debian's sitecustomize.py is a link to /etc: followed inside the tree.
    (tree / "etc").mkdir()
    (tree / "etc/custom.py").write_text("CUSTOM = 1\n")
    (tree / lib / "custom.py").symlink_to("/etc/custom.py")
    cfile = tree / lib / f"__pycache__/custom.{tag}.pyc"
    py_compile.compile(str(tree / "etc/custom.py"), cfile=str(cfile), dfile=f"/{lib}/custom.py")
    assert host_compiles_for(tree)
    made = tree_bytecode(tree)
    assert made.parent == entry
    pycs = sorted(str(p.relative_to(made)) for p in made.rglob("*") if p.is_file())
    assert pycs == [f"{lib}/__pycache__/{n}.{tag}.pyc" for n in ("custom", "stale")]
    pyc = Path(pycs[1])
    custom = (made / pycs[0]).read_bytes()
    assert marshal.loads(custom[16:]).co_consts[0] == 1
    data = (made / pyc).read_bytes()
    assert int.from_bytes(data[4:8], "little") == 0b11  # hash-based, checked
    assert not stale_on_device(data[:16])
    assert marshal.loads(data[16:]).co_filename == f"/{lib}/stale.py"
    # The tree is as it was, and a second call takes what the first made.
    assert stale_on_device((tree / lib / f"__pycache__/stale.{tag}.pyc").read_bytes()[:16])
    assert tree_bytecode(tree) == made
    # Made again elsewhere, the bytes are the same (the base's digest depends on them).
    shutil.rmtree(made)
    assert (tree_bytecode(tree) / pyc).read_bytes() == data


def test_the_dnf_family_needs_dnf_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("dnf") or shutil.which("dnf5"):
        missing("this host has dnf")
    with pytest.raises(BaseImageError, match="needs dnf"):
        _bootstrap(BaseSpec("fedora", "40"), tmp_path / "root")
    with pytest.raises(BaseImageError, match="no way to make a base of 'arch'"):
        BaseSpec("arch", "rolling").all_packages()


def _initramfs_names(data: bytes) -> set[str]:
    """The names in a gzip- or zstd-compressed newc cpio initramfs (what Debian's
    mkinitramfs writes without microcode)."""
    if data[:2] == b"\x1f\x8b":
        raw = gzip.decompress(data)
    else:
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(1 << 31)
    names, pos = set(), 0
    while raw[pos : pos + 6] in (b"070701", b"070702"):
        size, namesize = int(raw[pos + 54 : pos + 62], 16), int(raw[pos + 94 : pos + 102], 16)
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.add(name)
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3
    return names


BLUEPRINT = """
name = "edge"
[[customizations.files]]
path = "/etc/edge.conf"
data = "port=80\\n"
"""


# Two creates, a lint and a blueprint build with its rechunk: 582 s at a load average
# of 20-30 on two cores, the bytecode made beside the tree already; making it, and the
# initramfs with atoll's hook (171 s at that load), happens once per tree.
@pytest.mark.timeout(900)
def test_a_bookworm_base_lints_builds_and_is_reproducible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow: debootstrap of bookworm with a kernel (cached for later runs)."""
    require_tool("debootstrap")
    require_tool("podman")
    require_tool("runc")
    if os.geteuid() != 0:
        missing("debootstrap and podman build with runc need root here")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    spec = BaseSpec("debian", "bookworm")
    cache = cache_root() / "base"
    first = create_base(spec, f"oci:{tmp_path / 'a'}:base", cache=cache)
    second = create_base(spec, f"oci:{tmp_path / 'b'}:base", cache=cache)
    assert first.digest == second.digest
    base = ImageName.parse(f"oci:{tmp_path / 'a'}:base")
    report = lint_image(base, SystemContext())
    assert report.ok, report.to_text()
    assert report.fatal == 0
    # Debian's bytecode records its sources' mtimes: the second layer replaces it.
    assert "python-bytecode" not in {f.check for f in report.findings}, report.to_text()
    # The initramfs the packages made lacks atoll's early-boot step; the one in the
    # base's second layer (made once, beside the tree) has it.
    layout = tmp_path / "a/blobs/sha256"
    index = json.loads((tmp_path / "a/index.json").read_text())
    manifest = json.loads((layout / index["manifests"][0]["digest"][7:]).read_bytes())
    with tarfile.open(layout / manifest["layers"][-1]["digest"][7:]) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("/initramfs.img")]
        ours = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert {"usr/lib/atoll/prepare-root", "scripts/local-bottom/atoll"} <= _initramfs_names(ours)
    (cached,) = tree_initramfs(first.tree, 1767225600).values()
    assert cached.read_bytes() == ours
    packaged = next(first.tree.glob("usr/lib/modules/*/initramfs.img")).read_bytes()
    assert "usr/lib/atoll/prepare-root" not in _initramfs_names(packaged)
    out = ImageName.parse(f"oci:{tmp_path / 'out'}:1")
    settings = BuildSettings(network="host", workdir=tmp_path / "work")
    result = build_blueprint(
        parse_blueprint(BLUEPRINT, "edge.toml"), base, out, SystemContext(), settings
    )
    assert result.digest
    # The base brings atoll and its units: the build's atoll step adds none of them.
    assert not [a for a in result.added if a.startswith("atoll")], result.added


def test_base_create_of_the_dnf_family_names_dnf_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names what is missing, comes before the cache or the image is
    touched, and has the base builds' exit code."""
    if shutil.which("dnf") or shutil.which("dnf5"):
        missing("this host has dnf")
    cache, image = tmp_path / "cache", tmp_path / "image"
    argv = ["base", "create", "--distro", "fedora", "--release", "40", "--cache", str(cache)]
    assert main([*argv, "-t", f"oci:{image}:1"]) == BaseImageError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("atoll: error: a fedora base needs dnf (or dnf5) on this host"), err
    assert "hint: run atoll base create on a host with dnf" in err
    assert not cache.exists() and not image.exists()
