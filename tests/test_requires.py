"""A device runs atoll with its image's python3 and the distribution's packages: a
command that needs a package the image lacks stops with a clean error naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.errors import MissingPackageError
from atoll.requires import DEVICE_PACKAGES, missing_package
from helpers.osimage import build_os_image
from helpers.registry import RegistryView

SRC = Path(__file__).resolve().parents[1] / "src"
RUN = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from atoll.cli.main import main; sys.exit(main(sys.argv[2:]))"
)


def stdlib_atoll(*args: str) -> subprocess.CompletedProcess[str]:
    """atoll run by python3 with the standard library alone (-I -S: no site-packages,
    no user site, no environment), as on an image without the device packages."""
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUN, str(SRC), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_known_modules_name_their_package() -> None:
    error = missing_package(ModuleNotFoundError("No module named 'httpx'", name="httpx"))
    assert isinstance(error, MissingPackageError) and error.exit_code == 79
    assert "python3-httpx" in error.message
    nested = ModuleNotFoundError("x", name="cryptography.hazmat")
    assert "python3-cryptography" in str(missing_package(nested))
    assert missing_package(ModuleNotFoundError("x", name="nosuchthing")) is None
    assert DEVICE_PACKAGES == ("python3-httpx", "python3-zstandard", "python3-cryptography")


@pytest.mark.integration
def test_a_registry_upgrade_without_httpx_names_the_package(
    registry: RegistryView, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    build_os_image(images, "2", version="2.0", add={"usr/bin/new": b"two"})
    sysroot = tmp_path / "sysroot"
    # Installing from an oci: layout of gzip layers needs nothing beyond the standard library.
    installed = stdlib_atoll(
        "install", "to-filesystem", str(sysroot), "--source", f"oci:{images}:1"
    )
    assert installed.returncode == 0, installed.stderr
    ref = f"{registry.host}/{registry.new_repo('os')}:stable"
    registry.skopeo(
        "copy", "-q", *registry.skopeo_args("dest"), f"oci:{images}:2", f"docker://{ref}"
    )

    switched = stdlib_atoll("switch", "--sysroot", str(sysroot), ref)
    assert switched.returncode == MissingPackageError.exit_code, switched.stderr
    assert "internal error" not in switched.stderr
    assert "python3-httpx" in switched.stderr.splitlines()[0]

    # With the package (this interpreter's site-packages), the same command stages v2.
    staged = subprocess.run(
        [sys.executable, "-c", RUN, str(SRC), "switch", "--sysroot", str(sysroot), ref],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert staged.returncode == 0, staged.stderr
    status = stdlib_atoll("status", "--sysroot", str(sysroot), "--format", "json")
    assert json.loads(status.stdout)["status"]["staged"]["image"]["version"] == "2.0"


def test_a_terminal_without_rich_gets_no_bar_and_the_work_done(tmp_path: Path) -> None:
    """Device images carry no python3-rich: on a terminal the progress bar is left out."""
    import os
    import pty

    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", RUN, str(SRC), "install", "to-filesystem",
             str(tmp_path / "sysroot"), "--source", f"oci:{images}:1"],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            check=False,
            timeout=300,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert (tmp_path / "sysroot/atoll/deploy/default/deploy").is_dir()


@pytest.mark.integration
@pytest.mark.slow
def test_debian_packages_carry_a_registry_install(registry: RegistryView, tmp_path: Path) -> None:
    """The VM image's python3 with bookworm's python3-httpx, -zstandard and -cryptography
    (older than the versions the project is developed with) installs from a registry
    whose layers are zstd: atoll run in a chroot of that tree, its source bound in."""
    import os

    from helpers.parts import missing
    from helpers.vm import ensure_vm_tree

    if os.geteuid() != 0:
        missing("a chroot of the VM's Debian tree needs root")
    tree = ensure_vm_tree()
    images = tmp_path / "images"
    build_os_image(images, "1", version="1.0")
    ref = f"{registry.host}/{registry.new_repo('os')}:zstd"
    zstd = ["--dest-compress-format", "zstd"]
    registry.skopeo(
        "copy", "-q", *zstd, *registry.skopeo_args("dest"), f"oci:{images}:1", f"docker://{ref}"
    )
    # A mount namespace of its own: the source on /mnt, a tmpfs on /tmp; the cached
    # tree itself is not written to.
    script = (
        'mount --bind "$2" "$1/mnt" && mount -t tmpfs tmpfs "$1/tmp" && '
        'exec chroot "$1" python3 -I -c "$3" /mnt install to-filesystem /tmp/sysroot '
        '--source "$4" --tls-verify=false --allow-no-kernel --json'
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "-",
         str(tree.rootfs), str(SRC), RUN, ref],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["version"] == "1.0"
    assert result["filesTotal"] > 0
