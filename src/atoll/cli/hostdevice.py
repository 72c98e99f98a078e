"""The device the commands work on: a sysroot :class:`Device` with what the
layers above the sysroot hand into it.

The sysroot knows nothing of health checks or workloads (dependencies point
down, docs/architecture.md); the commands wire them in here: the boot
attempts a new deployment gets come from its greenboot configuration, and
staging pulls the images the new deployment binds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atoll.oci.context import SystemContext
    from atoll.progress import ProgressSink
    from atoll.sysroot.lifecycle import Device
    from atoll.sysroot.state import SysrootState


def boot_tries(deployment_root: Path) -> int:
    """GREENBOOT_MAX_BOOT_ATTEMPTS of the deployment at *deployment_root*."""
    from atoll.health.config import load_config

    config, _ = load_config(deployment_root)
    return config.max_boot_attempts


def pull_bound(root: Path, progress: ProgressSink | None, layout: Path | None) -> None:
    """Pull the images the deployment at *root* binds (atoll.workloads.bound);
    without podman on the host: a warning, and staging goes on."""
    from atoll.workloads.bound import pull_bound_images

    pull_bound_images(root, progress=progress, layout=layout)


def open_device(
    root: Path,
    ctx: SystemContext | None = None,
    *,
    progress: ProgressSink | None = None,
) -> Device:
    from atoll.sysroot.bootloader import detect_bootloader
    from atoll.sysroot.lifecycle import Device

    device = Device(root, ctx, progress=progress, boot_tries=boot_tries, pull_bound=pull_bound)
    # A command runs one operation: the bootloader is the one boot/ names now.
    device.bootloader = detect_bootloader(device.sysroot.boot)
    return device


def host_status(state: SysrootState) -> dict[str, Any]:
    """``atoll status``'s document, with the last automatic rollback."""
    from atoll.health.records import read_rollbacks
    from atoll.sysroot.status import host_document

    rollbacks = read_rollbacks(state.sysroot.root)
    return host_document(state, last_rollback=rollbacks[-1].to_json() if rollbacks else None)
