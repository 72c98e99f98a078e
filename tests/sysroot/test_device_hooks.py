"""What the layers above hand into the sysroot's Device: the boot attempts of a
new deployment, the pull of its bound images, the bootloader backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import BoundImageError
from atoll.oci.transports import ImageName
from atoll.progress import ProgressSink
from atoll.sysroot.bootloader import BlsBootloader, GrubBootloader, detect_bootloader
from atoll.sysroot.bootloader.grub import GrubSettings, install_grub_config
from atoll.sysroot.lifecycle import Device
from helpers.osimage import images

__all__ = ["images"]


def _first_tries(device: Device) -> int | None:
    return device.state().intended_entries()[0].tries_left


def test_boot_tries_given_as_a_number(tmp_path: Path, images: Path) -> None:
    device = Device(tmp_path / "sysroot", boot_tries=5)
    device.install(ImageName.parse(f"oci:{images}:1"))
    device.stage(ImageName.parse(f"oci:{images}:2"))
    device.finalize()
    assert _first_tries(device) == 5


def test_boot_tries_asked_of_the_new_deployment(tmp_path: Path, images: Path) -> None:
    asked: list[Path] = []

    def tries(root: Path) -> int:
        asked.append(root)
        return 7

    device = Device(tmp_path / "sysroot", boot_tries=tries)
    device.install(ImageName.parse(f"oci:{images}:1"))
    device.stage(ImageName.parse(f"oci:{images}:2"))
    staged = device.state().staged
    assert staged is not None
    device.finalize()
    assert _first_tries(device) == 7
    assert asked == [device.state().path(staged)]


def test_a_failed_bound_pull_stages_nothing(tmp_path: Path, images: Path) -> None:
    pulled: list[Path] = []

    def pull(root: Path, progress: ProgressSink | None, layout: Path | None) -> None:
        pulled.append(root)
        raise BoundImageError("pulling the bound images failed")

    device = Device(tmp_path / "sysroot", pull_bound=pull)
    device.install(ImageName.parse(f"oci:{images}:1"))
    with pytest.raises(BoundImageError):
        device.stage(ImageName.parse(f"oci:{images}:2"))
    assert device.state().staged is None
    assert len(pulled) == 1 and not pulled[0].exists()


def test_the_bootloader_is_grub_where_atoll_manages_it(tmp_path: Path, images: Path) -> None:
    device = Device(tmp_path / "sysroot")
    device.install(ImageName.parse(f"oci:{images}:1"))
    boot = device.sysroot.boot
    assert isinstance(detect_bootloader(boot), BlsBootloader)
    install_grub_config(boot, GrubSettings())
    assert isinstance(detect_bootloader(boot), GrubBootloader)
