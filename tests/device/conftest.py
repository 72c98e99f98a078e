"""Fixtures for the container-boot device: the cached Debian tree (helpers.debian)."""

from helpers.debian import debian_rootfs, debian_tree

__all__ = ["debian_rootfs", "debian_tree"]
