"""atoll's early-boot step: the files an image gets, and prepare-root run for real.

prepare-root runs here in a mount namespace of its own (``unshare --mount``),
on a sysroot made by atoll, with util-linux's mount, as it runs in an
initramfs once the root file system is mounted; the layout it leaves is read
back with findmnt inside the namespace.  The glue of both generators runs in
tests/device/test_vm.py, in a VM: initramfs-tools' hook and script, and the
dracut module, in initramfs images the generators themselves make.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from atoll.boot.early import (
    DRACUT_MODULE,
    EARLY_BOOT_FILES,
    INITRAMFS_TOOLS_HOOK,
    INITRAMFS_TOOLS_SCRIPT,
    PREPARE_ROOT,
    early_boot_digest,
    early_boot_file,
    has_early_boot,
    install_early_boot,
)
from atoll.oci.transports import parse_bootc_name
from atoll.sysroot.lifecycle import Device
from helpers.osimage import build_os_image
from helpers.parts import missing


def test_install_writes_every_file_executable(tmp_path: Path) -> None:
    assert not has_early_boot(tmp_path)
    written = install_early_boot(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == list(EARLY_BOOT_FILES)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o755
        assert path.read_bytes().startswith(b"#!/bin/")
    assert has_early_boot(tmp_path)
    assert INITRAMFS_TOOLS_HOOK == "usr/share/initramfs-tools/hooks/atoll"
    assert INITRAMFS_TOOLS_SCRIPT == "usr/share/initramfs-tools/scripts/local-bottom/atoll"
    assert DRACUT_MODULE == "usr/lib/dracut/modules.d/50atoll/module-setup.sh"


def test_install_replaces_hard_links_instead_of_writing_through_them(tmp_path: Path) -> None:
    shared = tmp_path / "cache-copy"
    shared.write_text("cached\n")
    target = tmp_path / "root" / PREPARE_ROOT
    target.parent.mkdir(parents=True)
    os.link(shared, target)
    install_early_boot(tmp_path / "root")
    assert shared.read_text() == "cached\n"
    assert target.read_bytes() == early_boot_file(PREPARE_ROOT)


def test_digest_changes_with_the_files() -> None:
    assert len(early_boot_digest()) == 64
    with pytest.raises(KeyError):
        early_boot_file("etc/passwd")


@pytest.mark.parametrize("path", EARLY_BOOT_FILES)
def test_scripts_are_valid_shell(path: str, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_bytes(early_boot_file(path))
    shell = "bash" if path == DRACUT_MODULE else "sh"
    proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{path} does not parse: {proc.stderr}"


# --- prepare-root, for real ------------------------------------------------------------


@pytest.fixture
def sysroot(tmp_path: Path) -> tuple[Path, str]:
    """A sysroot with one deployment; returns it and the deployment's atoll= value."""
    if os.geteuid() != 0:
        missing("bind mounts in a mount namespace need root")
    layout = tmp_path / "images"
    build_os_image(layout, "1", version="1.0")
    device = Device(tmp_path / "sysroot")
    device.install(parse_bootc_name(f"oci:{layout}:1"))
    path = device.state().entries[0].deployment_path
    assert path is not None
    (device.sysroot.var("default") / "marker").write_text("shared var\n")
    return tmp_path / "sysroot", path


def prepare(tmp_path: Path, sysroot: Path, cmdline: str) -> tuple[int, str, str]:
    """Run prepare-root on ROOT (the sysroot bound there, as an initramfs mounts
    the root file system), then describe what ROOT looks like."""
    script = tmp_path / "prepare-root"
    script.write_bytes(early_boot_file(PREPARE_ROOT))
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    probe = r"""
set -u
mount --bind "$SYSROOT" "$ROOT"
ATOLL_CMDLINE_FILE="$CMDLINE" sh "$SCRIPT" "$ROOT"
echo "rc=$?"
findmnt -R -n -l -o TARGET,OPTIONS "$ROOT" | sed "s|^$ROOT|ROOT|"
touch "$ROOT/usr/.probe" 2>/dev/null && echo "usr=writable" || echo "usr=read-only"
touch "$ROOT/etc/.probe" 2>/dev/null && echo "etc=writable" || echo "etc=read-only"
[ -f "$ROOT/sysroot/atoll/sysroot.json" ] && echo "sysroot=yes" || echo "sysroot=no"
echo "var=$(cat "$ROOT/var/marker" 2>/dev/null || echo none)"
"""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", probe],
        env={
            **os.environ,
            "SYSROOT": str(sysroot),
            "ROOT": str(root),
            "CMDLINE": str(tmp_path / "cmdline"),
            "SCRIPT": str(script),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    code = int(proc.stdout.split("rc=", 1)[1].split()[0])
    return code, proc.stdout.split("rc=", 1)[1], proc.stderr


def test_the_deployment_becomes_the_root(tmp_path: Path, sysroot: tuple[Path, str]) -> None:
    path, deployment = sysroot
    code, out, err = prepare(tmp_path, path, f"BOOT_IMAGE=/k root=UUID=x rw atoll={deployment}")
    assert code == 0, err
    assert f"atoll: booting default/{deployment.rsplit('/', 1)[1]}" in err
    mounts = dict(line.split() for line in out.splitlines() if line.startswith("ROOT"))
    assert set(mounts) == {"ROOT", "ROOT/usr", "ROOT/var", "ROOT/sysroot"}
    assert mounts["ROOT/usr"].startswith("ro,")
    assert mounts["ROOT"].startswith("rw,") and mounts["ROOT/var"].startswith("rw,")
    assert "usr=read-only" in out and "etc=writable" in out
    assert "sysroot=yes" in out and "var=shared var" in out


def test_var_in_the_deployments_fstab_is_left_to_systemd(
    tmp_path: Path, sysroot: tuple[Path, str]
) -> None:
    """/var on a partition of its own (install --layout): not bound here, so that
    systemd, finding /var unmounted, mounts the partition from fstab."""
    path, deployment = sysroot
    fstab = path / deployment.lstrip("/") / "etc/fstab"
    fstab.unlink(missing_ok=True)  # a hard link into the store: never written through
    fstab.write_text("# comment /var\nUUID=1234 /var ext4 defaults 0 2\n")
    code, out, err = prepare(tmp_path, path, f"root=UUID=x rw atoll={deployment}")
    assert code == 0, err
    mounts = [line.split()[0] for line in out.splitlines() if line.startswith("ROOT")]
    assert sorted(mounts) == ["ROOT", "ROOT/sysroot", "ROOT/usr"]
    assert "var=none" in out and "sysroot=yes" in out


def test_no_atoll_argument_changes_nothing(tmp_path: Path, sysroot: tuple[Path, str]) -> None:
    code, out, err = prepare(tmp_path, sysroot[0], "root=/dev/sda1 ro quiet")
    assert code == 0 and err == ""
    assert [line.split()[0] for line in out.splitlines() if line.startswith("ROOT")] == ["ROOT"]
    assert "sysroot=no" in out


@pytest.mark.parametrize(
    ("damage", "argument", "message"),
    [
        (None, "atoll=/atoll/deploy/../deploy/x.0", "must name /atoll/deploy/STATEROOT"),
        (None, "atoll=/atoll/deploy/a/b/deploy/x.0", "must name /atoll/deploy/STATEROOT"),
        (None, "atoll=/atoll/deploy/default/deploy/0000.0", "the deployment does not exist"),
        ("origin", None, "is incomplete (no /atoll/deploy/default/deploy/"),
        ("usr", None, "is incomplete (no /usr)"),
        ("var", None, "the stateroot default has no /var"),
        ("sysroot.json", None, "not an atoll sysroot"),
    ],
)
def test_a_missing_or_incomplete_deployment_is_refused(
    tmp_path: Path,
    sysroot: tuple[Path, str],
    damage: str | None,
    argument: str | None,
    message: str,
) -> None:
    path, deployment = sysroot
    target = path / deployment.lstrip("/")
    if damage == "origin":
        target.with_name(target.name + ".origin").unlink()
    elif damage == "usr":
        subprocess.run(["rm", "-rf", str(target / "usr")], check=True)
    elif damage == "var":
        subprocess.run(["rm", "-rf", str(path / "atoll/deploy/default/var")], check=True)
    elif damage == "sysroot.json":
        (path / "atoll/sysroot.json").unlink()
    code, out, err = prepare(tmp_path, path, argument or f"rw atoll={deployment}")
    assert code == 1
    assert err.startswith("atoll: cannot boot ") and message in err, err
    assert [line.split()[0] for line in out.splitlines() if line.startswith("ROOT")] == ["ROOT"]
