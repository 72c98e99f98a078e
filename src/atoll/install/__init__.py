"""Unattended installs: the install config, choosing the target disk, the
installer ISO (docs/install.md, "The installer ISO")."""

from atoll.install.config import InstallConfig, load_config, parse_config
from atoll.install.installer import install_from_config
from atoll.install.iso import customize_iso, make_iso

__all__ = [
    "InstallConfig",
    "customize_iso",
    "install_from_config",
    "load_config",
    "make_iso",
    "parse_config",
]
