"""The device: sysroot layout, deployments, boot entries, /etc merge, lifecycle."""

from atoll.oci.transports import ImageTransport
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

__all__ = [
    "SYSROOT_VERSION",
    "BootEntry",
    "BootState",
    "Deployment",
    "EtcMergeResult",
    "EtcMergeStrategy",
    "ImageTransport",
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
