"""Boot entries and the bootloaders that read them.

``bls`` is the entry format and the order; ``entries`` writes and counts the
entries in the sysroot's ``boot/``; ``grub`` and ``grubenv`` keep GRUB's
configuration and environment block in step with them (``flush`` puts those
files where GRUB reads them); ``backend`` chooses between the bootloaders.
"""

from atoll.sysroot.bootloader.backend import (
    BlsBootloader,
    Bootloader,
    GrubBootloader,
    detect_bootloader,
)
from atoll.sysroot.bootloader.bls import KARG, BootEntry, BootState
from atoll.sysroot.bootloader.grub import GrubSettings, grub_config, install_grub_config, sync_grub
from atoll.sysroot.bootloader.grubenv import (
    format_grubenv,
    parse_grubenv,
    read_grubenv,
    update_grubenv,
)

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
