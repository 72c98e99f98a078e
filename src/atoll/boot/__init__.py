"""Booting a real machine: the early-boot step an image carries, GRUB's
configuration and environment block made from atoll's boot entries, and how a
boot is recorded once the system is up (docs/boot.md)."""

from atoll.boot.early import (
    EARLY_BOOT_FILES,
    early_boot_digest,
    early_boot_file,
    has_early_boot,
    install_early_boot,
)
from atoll.boot.grub import GrubSettings, grub_config, install_grub_config, sync_grub
from atoll.boot.grubenv import format_grubenv, parse_grubenv, read_grubenv, update_grubenv

__all__ = [
    "EARLY_BOOT_FILES",
    "GrubSettings",
    "early_boot_digest",
    "early_boot_file",
    "format_grubenv",
    "grub_config",
    "has_early_boot",
    "install_early_boot",
    "install_grub_config",
    "parse_grubenv",
    "read_grubenv",
    "sync_grub",
    "update_grubenv",
]
