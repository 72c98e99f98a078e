"""The bootable-image lint, on images written without atoll's code (helpers.osimage).

The integration tests of built images (v1 and v2 from blueprints, and a broken
one) are in test_podman_build.py, beside the builds they need.
"""

from __future__ import annotations

import json
import os
import py_compile
import struct
import sys
from pathlib import Path

import pytest

from atoll.build.containerfile import HOOK_PATHS, Family
from atoll.build.imagetree import read_image_tree
from atoll.build.lint import CHECKS, Level, LintReport, lint_image
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.units import install_units
from helpers.cli import run_atoll
from helpers.osimage import FileSpec, Spec, build_os_image, tree_spec

#: Where Debian's python3-httpx, python3-zstandard and python3-cryptography put them.
DEVICE_MODULES: Spec = {
    "usr/lib/python3/dist-packages/httpx/__init__.py": "",
    "usr/lib/python3/dist-packages/zstandard/__init__.py": "",
    "usr/lib/python3/dist-packages/cryptography/__init__.py": "",
}
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"


def _bootable(tmp_path: Path) -> Spec:
    """What base_files lacks to be a bootable atoll image."""
    staging = tmp_path / "units"
    install_units(staging)
    spec: Spec = dict(tree_spec(staging))
    spec.update(
        {
            "usr/lib/os-release": 'ID=debian\nVERSION_ID="12"\n',
            "etc/passwd": PASSWD,
            "etc/group": GROUP,
            "usr/bin/atoll": FileSpec(b"#!/usr/bin/python3\n", 0o755),
            "usr/bin/python3": FileSpec(b"\x7fELF", 0o755),
            HOOK_PATHS[Family.DEBIAN]: FileSpec(b"#!/bin/sh\n", 0o755),
            **DEVICE_MODULES,
        }
    )
    return spec


def _image(tmp_path: Path, ref: str, extra: Spec | None = None, *, kernel: bool = True) -> str:
    layout = tmp_path / "layout"
    add = _bootable(tmp_path)
    add.update(extra or {})
    build_os_image(layout, ref, version="1", add=add, kernel=kernel)
    return f"oci:{layout}:{ref}"


def _lint(name: str, *, fatal_warnings: bool = False) -> LintReport:
    return lint_image(ImageName.parse(name), SystemContext(), fatal_warnings=fatal_warnings)


def test_a_bootable_image_passes_with_a_var_warning(tmp_path: Path) -> None:
    report = _lint(_image(tmp_path, "good"))
    assert report.fatal == 0 and report.ok
    assert report.family is Family.DEBIAN
    (finding,) = report.findings
    assert finding.check == "var-content" and finding.level is Level.WARNING
    assert finding.paths == ("/var/lib/app (1)",)
    strict = _lint(_image(tmp_path, "good"), fatal_warnings=True)
    assert not strict.ok


@pytest.mark.parametrize(
    ("extra", "kernel", "checks"),
    [
        ({}, False, {"kernel"}),
        ({"usr/lib/modules/6.1.0-atoll/initramfs.img": None}, True, {"initramfs"}),
        ({"usr/lib/os-release": None}, True, {"os-release"}),
        ({"usr/lib/os-release": 'NAME="no id"\n'}, True, {"os-release"}),
        ({HOOK_PATHS[Family.DEBIAN]: None}, True, {"early-boot"}),
        ({"usr/lib/systemd/system/atoll-healthcheck.service": None}, True, {"atoll-units"}),
        ({"usr/bin/atoll": None}, True, {"atoll-units"}),
        (
            {"etc/systemd/system/timers.target.wants/atoll-fetch-apply-updates.timer": None},
            True,
            {"atoll-units-enabled"},
        ),
        ({"usr/etc/app.conf": "x\n"}, True, {"usr-etc"}),
        ({"etc/passwd": None}, True, {"etc-passwd"}),
        # No root group: the files root's group owns are strays too.
        ({"etc/group": "app:x:1000:\n"}, True, {"etc-passwd", "file-owners"}),
        ({"srv/data": FileSpec(b"x", uid=4242, gid=1000)}, True, {"file-owners"}),
        ({"boot/vmlinuz-6.1": "k"}, True, {"boot-content"}),
        ({"usr/lib/python3/dist-packages/httpx/__init__.py": None}, True, {"device-python"}),
    ],
)
def test_each_check_catches_its_problem(
    tmp_path: Path, extra: Spec, kernel: bool, checks: set[str]
) -> None:
    report = _lint(_image(tmp_path, "broken", extra, kernel=kernel))
    found = {f.check for f in report.findings} - {"var-content"}
    assert found == checks
    levels = {c.name: c.level for c in CHECKS}
    assert report.ok == all(levels[c] is Level.WARNING for c in checks)


def test_device_python_names_the_packages_an_image_lacks(tmp_path: Path) -> None:
    """Without python3-httpx and the others the device boots, but cannot update from a
    registry: a warning naming the packages. Fedora's site-packages layout counts too."""
    gone: Spec = dict.fromkeys(DEVICE_MODULES)
    report = _lint(_image(tmp_path, "bare", gone))
    (finding,) = [f for f in report.findings if f.check == "device-python"]
    assert finding.level is Level.WARNING and report.ok
    assert finding.paths == ("python3-httpx", "python3-zstandard", "python3-cryptography")
    assert "cannot import httpx, zstandard, cryptography" in finding.message
    site = "usr/lib64/python3.12/site-packages"
    fedora: Spec = {
        **gone,
        f"{site}/httpx/__init__.py": "",
        f"{site}/zstandard.cpython-312-x86_64-linux-gnu.so": b"\x7fELF",
        "usr/lib/python3.12/site-packages/cryptography/__init__.py": "",
    }
    found = {f.check for f in _lint(_image(tmp_path, "fedora", fedora)).findings}
    assert "device-python" not in found


def _bytecode(tmp_path: Path, name: str, mode: py_compile.PycInvalidationMode, mtime: int) -> bytes:
    """Real bytecode as Python writes it, for a source last changed at *mtime*."""
    source = tmp_path / f"{name}.py"
    source.write_text("VALUE = 1\n")
    os.utime(source, (mtime, mtime))
    compiled = py_compile.compile(
        str(source), cfile=str(tmp_path / f"{name}.pyc"), invalidation_mode=mode
    )
    return Path(compiled).read_bytes()


def test_bytecode_that_a_deployment_makes_stale_is_reported(tmp_path: Path) -> None:
    """A deployment's files have mtime 0: timestamp bytecode compiled from a source
    with another mtime is stale there; hash-based bytecode, or mtime 0, is not."""
    lib, tag = "usr/lib/python3/dist-packages/app", sys.implementation.cache_tag
    modes = py_compile.PycInvalidationMode
    extra: Spec = {
        f"{lib}/__pycache__/old.{tag}.pyc": FileSpec(
            _bytecode(tmp_path, "old", modes.TIMESTAMP, 1_700_000_000)
        ),
        f"{lib}/__pycache__/zero.{tag}.pyc": FileSpec(
            _bytecode(tmp_path, "zero", modes.TIMESTAMP, 0)
        ),
        f"{lib}/__pycache__/hashed.{tag}.pyc": FileSpec(
            _bytecode(tmp_path, "hashed", modes.CHECKED_HASH, 1_700_000_000)
        ),
        # Outside /usr bytecode may be rewritten at run time: not looked at.
        f"opt/app/__pycache__/old.{tag}.pyc": FileSpec(
            _bytecode(tmp_path, "opt", modes.TIMESTAMP, 1_700_000_000)
        ),
    }
    report = _lint(_image(tmp_path, "pyc", extra))
    (finding,) = [f for f in report.findings if f.check == "python-bytecode"]
    assert finding.level is Level.WARNING and report.ok
    assert finding.message.startswith("1 Python bytecode files")
    assert finding.paths == (f"/{lib} (1)",)
    clean = {k: v for k, v in extra.items() if "old" not in k}
    assert "python-bytecode" not in {f.check for f in _lint(_image(tmp_path, "ok", clean)).findings}


def test_modules_without_bytecode_are_reported(tmp_path: Path) -> None:
    """/usr is read-only on a device: a module on python3.N's import path without
    bytecode for it is compiled again at every import (atoll's own files came
    without any); modules elsewhere are not looked at."""
    tag = sys.implementation.cache_tag
    lib = f"usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    hashed = FileSpec(_bytecode(tmp_path, "m", py_compile.PycInvalidationMode.CHECKED_HASH, 1))
    dist = "usr/lib/python3/dist-packages"
    extra: Spec = {
        f"{lib}/os.py": "",
        f"{lib}/__pycache__/os.{tag}.pyc": hashed,
        f"{lib}/json/__init__.py": "",
        f"{dist}/atoll/__init__.py": "",
        f"{dist}/atoll/__pycache__/__init__.cpython-39.pyc": hashed,  # another Python's
        "usr/share/doc/app/example.py": "",
    }
    report = _lint(_image(tmp_path, "nopyc", extra))
    (finding,) = [f for f in report.findings if f.check == "python-bytecode"]
    assert finding.level is Level.WARNING and report.ok
    # With the device modules of every test image (httpx, zstandard, cryptography).
    assert finding.message.startswith("5 Python modules on python3's import path")
    assert finding.paths == (
        f"/{lib}/json (1)",
        f"/{dist}/atoll (1)",
        f"/{dist}/cryptography (1)",
        f"/{dist}/httpx (1)",
        f"/{dist}/zstandard (1)",
    )
    compiled = {
        f"{folder}/__pycache__/{Path(module).stem}.{tag}.pyc": hashed
        for module in [*extra, *DEVICE_MODULES]
        if module.endswith(".py") and not module.startswith("usr/share")
        for folder in [module.rsplit("/", 1)[0]]
    }
    clean = _lint(_image(tmp_path, "compiled", {**extra, **compiled}))
    assert "python-bytecode" not in {f.check for f in clean.findings}


def test_layers_stack_as_on_a_device(tmp_path: Path) -> None:
    """Whiteouts and opaque directories of a later layer hide what lower ones had."""
    layout = tmp_path / "layout"
    add = _bootable(tmp_path)
    add.update(
        {
            "usr/lib/modules/6.1.0-atoll/.wh.vmlinuz": FileSpec(b""),
            "var/lib/app/.wh..wh..opq": FileSpec(b""),
            "var/lib/app/new": "kept\n",
            "etc/os-release": FileSpec(symlink="/usr/lib/os-release"),
        }
    )
    build_os_image(layout, "stacked", version="1", add=add)
    tree = read_image_tree(
        ImageName.parse(f"oci:{layout}:stacked"), SystemContext(), want=["usr/lib/os-release"]
    )
    assert "usr/lib/modules/6.1.0-atoll/vmlinuz" not in tree.entries
    assert "usr/lib/modules/6.1.0-atoll/initramfs.img" in tree.entries
    assert "var/lib/app/seed" not in tree.entries and "var/lib/app/new" in tree.entries
    assert tree.read("etc/os-release") == b'ID=debian\nVERSION_ID="12"\n'
    assert tree.resolve("etc/os-release") == "usr/lib/os-release"
    assert tree.resolve("no/such/file") is None


def test_cli_text_json_and_exit_codes(tmp_path: Path) -> None:
    good = _image(tmp_path, "good")
    proc = run_atoll("lint", good)
    assert proc.returncode == 0, proc.stderr
    assert "warning: var-content:" in proc.stdout
    assert "lint passed: 0 fatal, 1 warning(s)" in proc.stdout

    strict = run_atoll("lint", "--fatal-warnings", "--json", good)
    assert strict.returncode == 69
    data = json.loads(strict.stdout)
    assert data["ok"] is False and data["warnings"] == 1 and data["version"] == 1
    assert "fails the lint" in strict.stderr

    broken = _image(tmp_path, "broken", {"usr/etc/x": "x"}, kernel=False)
    proc = run_atoll("lint", "--json", broken)
    assert proc.returncode == 69
    data = json.loads(proc.stdout)
    assert data["fatal"] == 2
    failed = {c["name"] for c in data["checks"] if not c["passed"]}
    assert failed == {"kernel", "usr-etc", "var-content"}
    assert {f["check"]: f["paths"] for f in data["findings"]}["usr-etc"] == ["/usr/etc/x"]


def test_a_layer_holding_most_of_a_big_image_is_a_warning(tmp_path: Path) -> None:
    from helpers.images import build_image

    # Pseudo-random content does not compress: each layer blob is about its size.
    build_image(tmp_path / "one", "one", layers=2, layer_size=30 << 20)
    build_image(tmp_path / "even", "even", layers=5, layer_size=7 << 20)
    build_image(tmp_path / "small", "small", layers=2, layer_size=1 << 20)

    def share(ref: str, **kw: float) -> list[str]:
        report = lint_image(ImageName.parse(f"oci:{tmp_path / ref}:{ref}"), SystemContext(), **kw)
        return [f.message for f in report.findings if f.check == "layer-share"]

    (message,) = share("one")
    assert "holds 50 % of the image" in message and "atoll rechunk" in message
    assert share("even") == []
    assert share("small") == [], "images under 32 MiB are moved whole anyway"
    assert share("one", max_layer_share=0.6) == []
    proc = run_atoll("lint", "--json", "--max-layer-share", "10", f"oci:{tmp_path / 'even'}:even")
    findings = json.loads(proc.stdout)["findings"]
    assert any(f["check"] == "layer-share" for f in findings), proc.stderr
    proc = run_atoll("lint", "--max-layer-share", "0", f"oci:{tmp_path / 'even'}:even")
    assert proc.returncode == 2 and "percent" in proc.stderr


def _pe_kernel(signature: bytes) -> bytes:
    """An EFI-stub kernel's headers as the lint reads them: MZ, the PE header at
    0x40, a PE32+ optional header whose certificate table points at *signature*
    appended at the end (none when empty)."""
    body = bytearray(4096)
    body[:2] = b"MZ"
    struct.pack_into("<I", body, 0x3C, 0x40)
    body[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<H", body, 0x40 + 24, 0x20B)
    struct.pack_into("<II", body, 0x40 + 24 + 112 + 8 * 4, len(body) if signature else 0,
                     len(signature))  # fmt: skip
    return bytes(body) + signature


@pytest.mark.parametrize(
    ("kernel", "reason"),
    [
        (_pe_kernel(b"\x00" * 8 + b"0\x82 a PKCS#7 signature"), None),
        (_pe_kernel(b""), "no signature (its PE certificate table is empty)"),
        (b"\x7fELF" + bytes(600), "not an EFI binary (no MZ header)"),
        (_pe_kernel(b"")[:200], "not an EFI binary (its PE headers are cut short)"),
    ],
    ids=["signed", "unsigned", "elf", "short"],
)
def test_secure_boot_wants_a_signed_kernel(
    tmp_path: Path, kernel: bytes, reason: str | None
) -> None:
    """Only `lint --secure-boot` runs kernel-signed; a kernel without a signature
    is fatal there, since shim refuses to start it."""
    path = "usr/lib/modules/6.1.0-atoll/vmlinuz"
    name = _image(tmp_path, "k", {path: FileSpec(kernel, 0o644)})
    assert "kernel-signed" not in {c["name"] for c in _lint(name).to_json()["checks"]}
    proc = run_atoll("lint", "--secure-boot", "--json", name)
    doc = json.loads(proc.stdout)
    (check,) = [c for c in doc["checks"] if c["name"] == "kernel-signed"]
    if reason is None:
        assert proc.returncode == 0 and check["passed"], proc.stderr
    else:
        assert proc.returncode == 69 and not check["passed"]
        (finding,) = [f for f in doc["findings"] if f["check"] == "kernel-signed"]
        assert finding["message"] == f"kernel 6.1.0-atoll: {reason}"
        assert finding["paths"] == [f"/{path}"]
