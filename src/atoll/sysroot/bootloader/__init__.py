"""Boot entries and the bootloaders that read them.

``bls`` is the entry format and the order; ``entries`` writes and counts the
entries in the sysroot's ``boot/``; ``grub`` and ``grubenv`` keep GRUB's
configuration and environment block in step with them (``flush`` puts those
files where GRUB reads them); ``backend`` chooses between the bootloaders.
The names are imported on first use: reading the entries does not load GRUB's
writers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atoll.lazy import lazy_exports

if TYPE_CHECKING:
    from atoll.sysroot.bootloader.backend import (
        BlsBootloader,
        Bootloader,
        GrubBootloader,
        detect_bootloader,
    )
    from atoll.sysroot.bootloader.bls import KARG, BootEntry, BootState
    from atoll.sysroot.bootloader.grub import (
        GrubSettings,
        grub_config,
        install_grub_config,
        sync_grub,
    )
    from atoll.sysroot.bootloader.grubenv import (
        format_grubenv,
        parse_grubenv,
        read_grubenv,
        update_grubenv,
    )

#: The names imported on first use, by the module that defines them.
_LAZY = {
    "backend": ("BlsBootloader", "Bootloader", "GrubBootloader", "detect_bootloader"),
    "bls": ("KARG", "BootEntry", "BootState"),
    "grub": ("GrubSettings", "grub_config", "install_grub_config", "sync_grub"),
    "grubenv": ("format_grubenv", "parse_grubenv", "read_grubenv", "update_grubenv"),
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "KARG",
    "BlsBootloader",
    "BootEntry",
    "BootState",
    "Bootloader",
    "GrubBootloader",
    "GrubSettings",
    "detect_bootloader",
    "format_grubenv",
    "grub_config",
    "install_grub_config",
    "parse_grubenv",
    "read_grubenv",
    "sync_grub",
    "update_grubenv",
]
