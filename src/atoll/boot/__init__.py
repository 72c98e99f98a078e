"""Booting a real machine: the early-boot step an image carries, and how a boot
is recorded once the system is up (docs/boot.md).  GRUB's configuration and
environment block are a bootloader backend of the sysroot
(:mod:`atoll.sysroot.bootloader`)."""

from atoll.boot.early import (
    EARLY_BOOT_FILES,
    early_boot_digest,
    early_boot_file,
    has_early_boot,
    install_early_boot,
)

__all__ = [
    "EARLY_BOOT_FILES",
    "early_boot_digest",
    "early_boot_file",
    "has_early_boot",
    "install_early_boot",
]
