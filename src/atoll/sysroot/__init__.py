"""The device: sysroot layout, deployments, boot entries, /etc merge, lifecycle.

The names are imported on first use: ``atoll status`` reads the state and
does not pay for the /etc merge or the bootloaders' writers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atoll.lazy import lazy_exports

if TYPE_CHECKING:
    from atoll.sysroot.bootloader.entries import (
        BootEntry,
        BootState,
        choose_entry,
        install_kernel,
        mark_bad,
        mark_good,
        prune_kernels,
        read_entries,
        write_entries,
    )
    from atoll.sysroot.etcmerge import EtcMergeResult, EtcMergeStrategy, diff_etc, merge_etc
    from atoll.sysroot.layout import SYSROOT_VERSION, Sysroot
    from atoll.sysroot.origin import Deployment, Origin

#: The names imported on first use, by the module that defines them.
_LAZY = {
    "bootloader.entries": (
        "BootEntry",
        "BootState",
        "choose_entry",
        "install_kernel",
        "mark_bad",
        "mark_good",
        "prune_kernels",
        "read_entries",
        "write_entries",
    ),
    "etcmerge": ("EtcMergeResult", "EtcMergeStrategy", "diff_etc", "merge_etc"),
    "layout": ("SYSROOT_VERSION", "Sysroot"),
    "origin": ("Deployment", "Origin"),
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "SYSROOT_VERSION",
    "BootEntry",
    "BootState",
    "Deployment",
    "EtcMergeResult",
    "EtcMergeStrategy",
    "Origin",
    "Sysroot",
    "choose_entry",
    "diff_etc",
    "install_kernel",
    "mark_bad",
    "mark_good",
    "merge_etc",
    "prune_kernels",
    "read_entries",
    "write_entries",
]
